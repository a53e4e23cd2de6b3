//! Message bodies: DATA (dot-unstuffed, smuggling-safe end of data) and BDAT chunks, the content policies, and aborted bodies.

use super::*;
use crate::config::ContentPolicy;
use crate::data::DecodeStep;
use crate::reply::EnhancedCode;

impl Session {
    pub(super) fn step_data(&mut self) -> Step {
        let buf = self.inb.data();
        match self.decoder.decode(buf) {
            DecodeStep::NeedMore { consumed } => {
                self.consume(consumed);
                if consumed == 0 {
                    Step::Idle
                } else {
                    Step::Continue
                }
            }
            DecodeStep::Chunk {
                start,
                end,
                consumed,
            } => {
                self.note_nul(self.inb.start + start..self.inb.start + end);
                let len = (end - start) as u64;
                self.txn.body_len += len;
                let max = self.config.limits.max_message_size;
                if max > 0 && self.txn.body_len > max {
                    self.txn.too_big = true;
                }
                if self.body_doomed() || end == start {
                    self.consume(consumed);
                    return if consumed == 0 {
                        Step::Idle
                    } else {
                        Step::Continue
                    };
                }
                let abs = self.inb.start;
                self.framing.release = consumed;
                Step::Emit(Emit::Body {
                    start: abs + start,
                    end: abs + end,
                })
            }
            DecodeStep::End { consumed } => {
                self.consume(consumed);
                self.arm(self.config.timeouts.command);
                let bare = self.decoder.saw_bare_lf() || self.decoder.saw_bare_cr();
                let reason = self.content_refusal(bare, self.decoder.saw_long_line());
                self.finish_body(reason)
            }
        }
    }

    /// Whether body chunks are searched for NUL octets: a text body under
    /// the refusing policy, not already refused.
    /// Notes a NUL octet in `self.inb.buf[bytes]`, body text the policy
    /// refuses NUL in (looked for until the first is found).
    fn note_nul(&mut self, bytes: std::ops::Range<usize>) {
        let look = self.config.limits.nul_bytes == ContentPolicy::Reject
            && !self.txn.nul
            && self.txn.body != BodyType::BinaryMime;
        if look && memchr::memchr(0, &self.inb.buf[bytes]).is_some() {
            self.txn.nul = true;
        }
    }

    /// Why a complete body must be refused, if it must (size, then the
    /// line-ending, NUL and line-length policies; BINARYMIME is exempt from
    /// those three).
    pub(super) fn content_refusal(&self, bare: bool, long_line: bool) -> Option<AbortReason> {
        let limits = &self.config.limits;
        let text = self.txn.body != BodyType::BinaryMime;
        if self.txn.too_big {
            Some(AbortReason::TooBig)
        } else if text && bare && limits.bare_line_endings == ContentPolicy::Reject {
            Some(AbortReason::BareLineEnding)
        } else if self.txn.nul {
            // Only ever set for text under the refusing policy (note_nul).
            Some(AbortReason::NulByte)
        } else if text && long_line && limits.long_lines == ContentPolicy::Reject {
            Some(AbortReason::LongLine)
        } else {
            None
        }
    }

    /// Whether the body seen so far is already refused (then it is not
    /// handed out any more, only read to its end).
    pub(super) fn body_doomed(&self) -> bool {
        let bare = self.decoder.saw_bare_lf() || self.decoder.saw_bare_cr();
        self.content_refusal(bare, false).is_some()
    }

    pub(super) fn finish_body(&mut self, reason: Option<AbortReason>) -> Step {
        match reason {
            Some(reason) => {
                self.phase = Phase::Command;
                self.decisions.notices.push_back(Notice::Aborted(reason));
                let reply = match reason {
                    AbortReason::TooBig => Reply::MESSAGE_TOO_BIG,
                    AbortReason::BareLineEnding => Reply::BARE_LF_DATA,
                    AbortReason::NulByte => Reply::NUL_DATA,
                    _ => Reply::DATA_LINE_TOO_LONG,
                };
                self.queue_message_refusal(&reply);
                Step::Continue
            }
            None => {
                let _t = self.new_ticket(Pending::MessageEnd);
                Step::Emit(Emit::MessageEnd)
            }
        }
    }

    pub(super) fn step_bdat(&mut self) -> Step {
        let Phase::Bdat {
            remaining,
            last,
            ref refuse,
        } = self.phase
        else {
            return Step::Idle;
        };
        let refused = refuse.is_some();
        if remaining == 0 {
            let refuse = match std::mem::replace(&mut self.phase, Phase::Command) {
                Phase::Bdat { refuse, .. } => refuse,
                _ => None,
            };
            self.arm(self.config.timeouts.command);
            if let Some(r) = refuse {
                if self.txn.body_kind == Some(BodyKind::Bdat) {
                    self.decisions
                        .notices
                        .push_back(Notice::Aborted(AbortReason::Refused));
                    self.txn = Transaction::default();
                }
                self.queue_counted(&r);
                return Step::Continue;
            }
            if self.txn.too_big {
                self.decisions
                    .notices
                    .push_back(Notice::Aborted(AbortReason::TooBig));
                if last {
                    self.queue_message_refusal(&Reply::MESSAGE_TOO_BIG);
                } else {
                    self.txn = Transaction::default();
                    self.queue_counted(&Reply::MESSAGE_TOO_BIG);
                }
                return Step::Continue;
            }
            if !last {
                let r = Reply::new(
                    250,
                    EnhancedCode::new(2, 0, 0),
                    format!("{} octets received", self.txn.body_len),
                );
                self.queue(&r);
                return Step::Continue;
            }
            self.checker.finish();
            let bare = self.checker.saw_bare_lf() || self.checker.saw_bare_cr();
            let reason = self.content_refusal(bare, self.checker.saw_long_line());
            return self.finish_body(reason);
        }
        let avail = self.inb.len() as u64;
        if avail == 0 {
            return Step::Idle;
        }
        let n = avail.min(remaining) as usize;
        if let Phase::Bdat { remaining, .. } = &mut self.phase {
            *remaining -= n as u64;
        }
        let range = self.inb.start..self.inb.start + n;
        if refused {
            self.consume(n);
            return Step::Continue;
        }
        self.txn.body_len += n as u64;
        let max = self.config.limits.max_message_size;
        if max > 0 && self.txn.body_len > max {
            self.txn.too_big = true;
        }
        if self.txn.too_big {
            self.consume(n);
            return Step::Continue;
        }
        self.note_nul(range.clone());
        self.checker.feed(&self.inb.buf[range.clone()]);
        self.framing.release = n;
        Step::Emit(Emit::Body {
            start: range.start,
            end: range.end,
        })
    }

    pub(super) fn reset_transaction(&mut self) {
        if self.txn.mail {
            self.decisions.notices.push_back(Notice::Reset);
        }
        self.txn = Transaction::default();
    }

    pub(super) fn abort_body(&mut self, reason: AbortReason) {
        // A complete body awaiting its decision was not cut off.
        if self.txn.body_kind.is_some()
            && !matches!(self.decisions.pending, Some((_, Pending::MessageEnd)))
        {
            self.decisions.notices.push_back(Notice::Aborted(reason));
            self.txn = Transaction::default();
        }
    }
}
