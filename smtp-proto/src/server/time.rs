//! Deadlines: time is an input; a deadline moves only when a complete command arrives (RFC 5321 §4.5.3.2).

use super::*;

impl Session {
    /// Reports that time `now` was reached (at or after [`Session::poll_timeout`]).
    /// An expired deadline answers `421 4.4.2` and closes.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.timing.clock.advance(now);
        if self.timing.throttle_until.is_some_and(|until| now >= until) {
            self.timing.throttle_until = None;
            // The client waited for our replies, not we for its commands:
            // its clock restarts now.
            if matches!(
                self.phase,
                Phase::Command | Phase::Auth(_) | Phase::NoService
            ) {
                self.arm(self.config.timeouts.command);
            }
        }
        if self.decisions.pending.is_some() || self.is_closed() {
            return;
        }
        if self.release_idle_at().is_some_and(|at| now >= at) {
            self.apply_release();
            self.inb.release();
            self.out.release();
            self.timing.released = true;
        }
        let Some(deadline) = self.timing.deadline else {
            return;
        };
        if now < deadline {
            return;
        }
        self.apply_release();
        if matches!(self.phase, Phase::Proxy | Phase::StartTls) {
            // No clear-text reply: before the PROXY header, or mid-handshake.
            self.close(CloseReason::Timeout);
            return;
        }
        self.abort_body(AbortReason::Timeout);
        self.queue(&Reply::TIMEOUT);
        self.close(CloseReason::Timeout);
    }

    /// When [`Session::handle_timeout`] must be called; `None` while a
    /// decision is pending or the session is closed.
    ///
    /// Besides the client's deadline, this is the soft deadline after which
    /// an idle session frees its buffers (`Timeouts::release_idle`), and
    /// the end of a throttle ([`Instruction::Throttle`]).
    #[inline]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.decisions.pending.is_some() || self.is_closed() {
            return None;
        }
        let t = earliest(self.timing.deadline, self.release_idle_at());
        earliest(t, self.timing.throttle_until)
    }

    /// When the session gives up on the client (`421 4.4.2` and close) if
    /// nothing arrives: the hard part of [`Session::poll_timeout`]. `None`
    /// while a decision is pending or the session is closed.
    #[inline]
    pub fn client_deadline(&self) -> Option<Instant> {
        if self.decisions.pending.is_some() || self.is_closed() {
            return None;
        }
        self.timing.deadline
    }

    /// Holds the next command for `d` from the last time given (the
    /// session says [`Instruction::Throttle`] until then), as the error
    /// delay does; replies already queued still go out. For delays the core
    /// cannot know of, e.g. a client with failed AUTH attempts in other
    /// sessions. A longer delay already running stays.
    pub fn delay(&mut self, d: Duration) {
        let until = self.timing.clock.after(d);
        self.timing.throttle_until = match (self.timing.throttle_until, until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    pub(super) fn arm(&mut self, d: Duration) {
        self.arm_from(self.timing.clock.now(), d);
    }

    pub(super) fn arm_from(&mut self, now: Instant, d: Duration) {
        self.timing.deadline = now.checked_add(d);
    }
}

/// The earlier of two optional instants.
#[inline]
fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
