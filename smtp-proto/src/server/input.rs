//! The input side: the bounded input buffer, line framing (CRLF only; a bare LF is answered, an over-long line poisoned to its end), and the room each command line may take.

use super::*;

impl Session {
    // ----- input -----

    /// Free space to read into; then call [`Session::filled`]. Empty when the
    /// session does not want input now.
    pub fn read_buf(&mut self) -> &mut [u8] {
        if self.decisions.ready.is_some() {
            // An event staged by `has_event` points into the buffer.
            return &mut [];
        }
        self.apply_release();
        let cap = self.input_capacity();
        self.inb.compact();
        // Lazily sized: command lines fit a small buffer (an idle session
        // holds little memory); a body, or a buffer filled by one long
        // line, gets the full size. A body whose buffer was just released
        // (`release_idle_at`) starts small again: the slow client's next
        // line may be minutes away.
        let body = matches!(self.phase, Phase::Data | Phase::Bdat { .. }) && !self.timing.released;
        let want = if body {
            cap
        } else if self.inb.end == self.inb.buf.len() {
            (self.inb.buf.len() * 2).clamp(INITIAL_INPUT, cap)
        } else {
            self.inb.buf.len().max(INITIAL_INPUT.min(cap))
        };
        self.inb.grow_to(want);
        if !self.wants_read() {
            return &mut [];
        }
        self.inb.spare()
    }

    /// Reports that `n` bytes were written into [`Session::read_buf`] at `now`.
    pub fn filled(&mut self, n: usize, now: Instant) {
        self.timing.clock.advance(now);
        let new = self.inb.filled(n);
        if new.is_empty() {
            return;
        }
        self.timing.last_input = self.timing.clock.now();
        self.timing.released = false;
        self.note_input(new);
    }

    /// Copies bytes into the session; returns how many were taken (fewer
    /// than given when the input buffer is full: offer the rest later).
    pub fn receive(&mut self, bytes: &[u8], now: Instant) -> usize {
        let buf = self.read_buf();
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.filled(n, now);
        n
    }

    pub(super) fn note_input(&mut self, new: std::ops::Range<usize>) {
        match self.phase {
            Phase::StartTls | Phase::Closed => {
                // Plaintext after STARTTLS, or anything after close: discarded.
                if matches!(self.phase, Phase::StartTls) {
                    self.decisions
                        .notices
                        .push_back(Notice::Violation(Violation::StartTlsInjection));
                }
                self.inb.end = new.start;
            }
            Phase::Connect | Phase::NoService | Phase::Command | Phase::Auth(_) | Phase::Proxy => {
                if self.greeting_queued && !self.greeting_sent
                    || matches!(self.phase, Phase::Connect) && !self.config.proxy_protocol
                {
                    self.violation(Violation::PreGreeting);
                }
            }
            Phase::Data | Phase::Bdat { .. } => {
                let bytes = &self.inb.buf[new];
                if bytes.len() >= 512 || memchr::memchr(b'\n', bytes).is_some() {
                    self.arm(self.config.timeouts.data);
                }
            }
        }
    }

    /// The client closed its side of the connection.
    pub fn receive_eof(&mut self, now: Instant) {
        self.timing.clock.advance(now);
        self.apply_release();
        if self.is_closed() {
            return;
        }
        self.abort_body(AbortReason::Disconnected);
        self.close(CloseReason::Eof);
    }

    /// Bytes the session's input and output buffers hold (their capacity):
    /// small while commands flow, up to `Limits::input_buffer` during a
    /// body. An idle session releases both (`Timeouts::release_idle`); an
    /// adapter waiting to read then takes back only a small input buffer.
    pub fn buffer_bytes(&self) -> usize {
        self.inb.buf.capacity() + self.out.capacity()
    }

    /// When the buffers of an idle session are due to be freed: once per
    /// silence, while they hold memory, every input byte is consumed (and
    /// no event holds a piece of it) and all output is written.
    pub(super) fn release_idle_at(&self) -> Option<Instant> {
        let holds = self.inb.buf.capacity() > 0 || self.out.capacity() > 0;
        let idle = self.inb.start + self.framing.release >= self.inb.end
            && self.decisions.ready.is_none()
            && !self.wants_write();
        if self.timing.released || !holds || !idle {
            return None;
        }
        // Too far to represent: never.
        self.timing
            .last_input
            .checked_add(self.config.timeouts.release_idle)
    }

    /// Finds the next line: every LF ends one, but only a line ended by
    /// CRLF (with no other CR in it) is a command. A line ended by a bare LF
    /// is answered at once (a netcat user is not left waiting), and what
    /// follows it up to the next CRLF is dropped without a second answer:
    /// a bare LF never starts a command (DESIGN rule 1), and a CRLF client
    /// with a stray LF in a line still gets one answer per line. Over-long
    /// lines are poisoned (dropped as they arrive, then answered once).
    /// `None` while no line end is buffered.
    pub(super) fn next_line(&mut self, max: usize) -> Option<Line> {
        let buf = &self.inb.buf[self.inb.start..self.inb.end];
        let from = self.framing.scan.min(buf.len());
        let Some(i) = memchr::memchr(b'\n', &buf[from..]) else {
            self.framing.scan = buf.len();
            if self.framing.poisoned || buf.len() > max {
                self.poison(buf.len());
            }
            return None;
        };
        let lf = from + i;
        let len = lf + 1;
        let crlf = lf > 0 && buf[lf - 1] == b'\r'
            || lf == 0 && self.framing.poisoned && self.framing.scan_cr;
        let too_long = std::mem::take(&mut self.framing.poisoned) || len > max;
        let bare_cr = crlf && !too_long && memchr::memchr(b'\r', &buf[..len - 2]).is_some();
        let after_bare = std::mem::replace(&mut self.framing.after_bare_lf, !crlf);
        self.framing.scan_cr = false;
        self.framing.scan = 0;
        let line = if !crlf {
            Line::Refused(if too_long {
                Reply::LINE_TOO_LONG
            } else {
                Reply::BARE_LF_COMMAND
            })
        } else if after_bare {
            Line::Dropped
        } else if too_long {
            Line::Refused(Reply::LINE_TOO_LONG)
        } else if bare_cr {
            Line::Refused(Reply::BARE_LF_COMMAND)
        } else {
            // The caller consumes this line (now or after its decision).
            return Some(Line::Complete(len));
        };
        self.consume(len);
        Some(line)
    }

    /// The longest line allowed for the line being read: AUTH responses
    /// have their own limit (RFC 4954 §4); MAIL and RCPT lines may be longer
    /// by what the advertised extensions' parameters add (RFC 5321
    /// §4.5.3.1.4, RFC 1869 §4.1.2).
    pub(super) fn line_limit(&self) -> usize {
        if let Phase::Auth(_) = self.phase {
            return MAX_AUTH_LINE;
        }
        let base = self.config.limits.max_command_line;
        if self.framing.poisoned {
            return base;
        }
        let end = self.inb.end.min(self.inb.start + 4);
        let verb = self.inb.buf.get(self.inb.start..end).unwrap_or(&[]);
        if verb.eq_ignore_ascii_case(b"MAIL") {
            base + self.mail_param_room()
        } else if verb.eq_ignore_ascii_case(b"RCPT") {
            base + self.rcpt_param_room()
        } else {
            base
        }
    }

    /// Octets the advertised MAIL parameters may add to a MAIL line.
    pub(super) fn mail_param_room(&self) -> usize {
        let e = &self.ext;
        let mut n = 0;
        if e.size {
            n += ROOM_SIZE;
        }
        if e.eightbitmime || e.binarymime && e.chunking {
            n += ROOM_BODY;
        }
        if e.smtputf8 {
            n += ROOM_SMTPUTF8;
        }
        if e.dsn {
            n += ROOM_RET + ROOM_ENVID;
        }
        if self.auth_offered() {
            n += ROOM_AUTH;
        }
        if e.requiretls && self.is_tls() {
            n += ROOM_REQUIRETLS;
        }
        n
    }

    /// Octets the advertised RCPT parameters may add to a RCPT line.
    pub(super) fn rcpt_param_room(&self) -> usize {
        if self.ext.dsn {
            ROOM_NOTIFY + ROOM_ORCPT
        } else {
            0
        }
    }

    /// Drops the first `upto` bytes of an over-long line (remembering
    /// whether the last one was a CR that a following LF would complete).
    pub(super) fn poison(&mut self, upto: usize) {
        self.framing.poisoned = true;
        let upto = upto.min(self.inb.end - self.inb.start);
        if upto > 0 {
            self.framing.scan_cr = self.inb.buf[self.inb.start + upto - 1] == b'\r';
        }
        self.inb.start += upto;
        self.framing.scan = 0;
    }

    // ----- helpers -----

    /// The input buffer's size: never smaller than a maximal line.
    #[inline]
    pub(super) fn input_capacity(&self) -> usize {
        let l = &self.config.limits;
        l.input_buffer
            .max(MIN_INPUT)
            .max(l.max_command_line + MAX_PARAM_ROOM + 2)
    }

    /// Marks `n` input bytes as processed (nothing once closed: closing
    /// already dropped the whole buffer).
    pub(super) fn consume(&mut self, n: usize) {
        if !self.is_closed() {
            self.inb.consume(n);
        }
    }

    pub(super) fn apply_release(&mut self) {
        if self.decisions.ready.is_some() {
            // A staged event (`has_event`) still points into the buffer:
            // nothing moves until `poll` has handed it out.
            return;
        }
        if self.framing.release > 0 {
            self.inb.consume(self.framing.release);
            self.framing.release = 0;
        }
        self.inb.settle();
    }
}
