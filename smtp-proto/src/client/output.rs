//! The output side: commands queued, flushed within the pipelining window, and the bound on pending output.

use super::*;

impl Client {
    /// Bytes to send to the server.
    pub fn transmit(&self) -> &[u8] {
        self.out.pending()
    }

    /// Reports that `n` bytes of [`Client::transmit`] were written.
    pub fn transmitted(&mut self, n: usize) {
        self.out.written(n);
    }

    /// Room left for body bytes.
    pub(super) fn budget(&self) -> usize {
        let queued: usize = self.queue.iter().map(|c| c.bytes.len()).sum();
        let buffered = self.txn.as_ref().map_or(0, |t| t.buf.len());
        let used = self.out.len() + queued + buffered;
        self.config.max_pending_output.saturating_sub(used)
    }

    pub(super) fn chunk_size(&self) -> usize {
        self.config
            .chunk_size
            .clamp(1, (self.config.max_pending_output / 2).max(1))
    }

    pub(super) fn queue_command(&mut self, bytes: Vec<u8>, expect: Expect) {
        self.queue.push_back(Outgoing {
            bytes,
            expect,
            replies: 1,
            wait_idle: false,
        });
    }

    /// Writes queued commands as far as pipelining (or lock-step) allows.
    pub(super) fn flush_queue(&mut self) {
        while let Some(front) = self.queue.front() {
            if self.is_closed() || self.phase == Phase::Handshake {
                return;
            }
            // Nothing may interleave with a DATA body (nothing is queued
            // then anyway; this keeps it so).
            if self
                .txn
                .as_ref()
                .is_some_and(|t| !t.bdat && t.body == BodyState::Open)
            {
                return;
            }
            let idle = self.inflight.is_empty();
            let may_pipeline = self.pipelining()
                && !front.wait_idle
                && self.inflight.len() < self.config.max_pipelined
                && self.inflight.back().is_some_and(|e| !e.is_sync());
            if !idle && !may_pipeline {
                return;
            }
            let Some(cmd) = self.queue.pop_front() else {
                return;
            };
            if idle {
                self.wait_since = self.clock.now();
            }
            self.out.tail().extend_from_slice(&cmd.bytes);
            for _ in 0..cmd.replies.max(1) {
                self.inflight.push_back(cmd.expect);
            }
        }
    }

    /// Drops the transaction's commands that are not written yet.
    pub(super) fn drop_queued_txn(&mut self) {
        self.queue.retain(|c| !c.expect.in_txn());
    }
}
