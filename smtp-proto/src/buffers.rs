//! The bookkeeping both roles share: the input buffer, the output buffer
//! and the clock. [`Session`](crate::server::Session) and
//! [`Client`](crate::client::Client) each own one of every kind; the rules
//! that make them safe to drive (bounded growth, compaction, a clock that
//! never goes back) are kept, and tested, here once.

use std::ops::Range;
use std::time::{Duration, Instant};

/// Bytes received and not processed yet: `buf[start..end]`. The indices
/// are absolute, so a parser may keep offsets into `buf` until it consumes.
#[derive(Debug, Default)]
pub(crate) struct InBuf {
    pub(crate) buf: Vec<u8>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl InBuf {
    /// The unprocessed bytes.
    #[inline]
    pub(crate) fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    /// How many bytes wait to be processed.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.end - self.start
    }

    /// Moves the unprocessed bytes to the front (offsets into `buf` change).
    #[inline]
    pub(crate) fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }

    /// Grows the buffer to `want` bytes (never shrinks it).
    #[inline]
    pub(crate) fn grow_to(&mut self, want: usize) {
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
    }

    /// The free space after the data.
    #[inline]
    pub(crate) fn spare(&mut self) -> &mut [u8] {
        let len = self.buf.len();
        &mut self.buf[self.end..len]
    }

    /// `n` bytes were written into [`InBuf::spare`] (clamped to its size);
    /// returns where they are.
    #[inline]
    pub(crate) fn filled(&mut self, n: usize) -> Range<usize> {
        let n = n.min(self.buf.len() - self.end);
        let new = self.end..self.end + n;
        self.end += n;
        new
    }

    /// Marks `n` bytes processed (offsets into `buf` stay valid).
    #[inline]
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// Starts over at 0 once every byte is processed (offsets into `buf`
    /// no longer hold).
    #[inline]
    pub(crate) fn settle(&mut self) {
        if self.start == self.end {
            self.clear();
        }
    }

    /// Forgets every byte (the allocation stays).
    #[inline]
    pub(crate) fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Forgets every byte and frees the allocation.
    pub(crate) fn release(&mut self) {
        *self = InBuf::default();
    }
}

/// Bytes to send, in order: `buf[pos..]`.
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl OutBuf {
    /// What waits to be written.
    #[inline]
    pub(crate) fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// How many bytes wait to be written.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Whether nothing waits.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    /// `n` bytes were written (clamped to what waits); returns whether
    /// everything is written now (the buffer then starts over at 0).
    #[inline]
    pub(crate) fn written(&mut self, n: usize) -> bool {
        self.pos = (self.pos + n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            return true;
        }
        false
    }

    /// Where new bytes are appended.
    #[inline]
    pub(crate) fn tail(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Drops what waits (the allocation stays).
    pub(crate) fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Drops what waits and frees the allocation.
    pub(crate) fn release(&mut self) {
        *self = OutBuf::default();
    }

    /// The allocation's size.
    pub(crate) fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// The latest time a machine was told. It never goes back: an input
/// stamped earlier than one already seen (a caller that read its clock
/// before a slow step) does not move deadlines backwards.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock(Instant);

impl Clock {
    pub(crate) fn new(now: Instant) -> Clock {
        Clock(now)
    }

    /// The current time as far as the machine knows.
    #[inline]
    pub(crate) fn now(&self) -> Instant {
        self.0
    }

    /// Takes `now` if it is later.
    #[inline]
    pub(crate) fn advance(&mut self, now: Instant) {
        self.0 = self.0.max(now);
    }

    /// `d` from now; `None` past what `Instant` holds (no deadline).
    #[inline]
    pub(crate) fn after(&self, d: Duration) -> Option<Instant> {
        self.0.checked_add(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_framed_compacted_and_bounded() {
        let mut b = InBuf::default();
        b.grow_to(8);
        b.spare()[..5].copy_from_slice(b"HELO\n");
        assert_eq!(b.filled(5), 0..5);
        assert_eq!(b.data(), b"HELO\n");
        // More than the spare room is clamped.
        assert_eq!(b.filled(100), 5..8);
        b.consume(2);
        assert_eq!((b.start, b.end, b.len()), (2, 8, 6));
        b.compact();
        assert_eq!((b.start, b.end), (0, 6));
        assert_eq!(&b.data()[..3], b"LO\n");
        // Growing keeps the data; an emptied buffer starts over once settled.
        b.grow_to(16);
        assert_eq!(b.spare().len(), 10);
        b.consume(100);
        assert_eq!((b.start, b.end, b.len()), (6, 6, 0));
        b.settle();
        assert_eq!((b.start, b.end, b.len()), (0, 0, 0));
        b.release();
        assert!(b.buf.capacity() == 0 && b.spare().is_empty());
    }

    // The clock's rule (it never goes back) is tested through the session:
    // tests/session.rs `the_clock_never_goes_back` (no clock is read here).

    #[test]
    fn output_drains_in_order() {
        let mut o = OutBuf::default();
        assert!(o.is_empty() && o.pending().is_empty());
        o.tail().extend_from_slice(b"250 OK\r\n");
        o.tail().extend_from_slice(b"221 Bye\r\n");
        assert_eq!(o.len(), 17);
        assert!(!o.written(4));
        assert_eq!(o.pending(), b"OK\r\n221 Bye\r\n");
        // More than waits is clamped, and the buffer starts over.
        assert!(o.written(1000));
        assert!(o.is_empty());
        assert_eq!(o.pending(), b"");
        o.tail().push(b'x');
        assert_eq!(o.pending(), b"x");
        o.clear();
        assert!(o.is_empty());
        o.release();
        assert_eq!(o.capacity(), 0);
    }
}
