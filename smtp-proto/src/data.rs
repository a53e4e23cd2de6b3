//! DATA body decoding (RFC 5321 §4.1.1.4, §4.5.2) and related helpers.
//!
//! # Contract
//!
//! [`DataDecoder`] is a sans-IO, zero-copy, allocation-free streaming decoder
//! for the body that follows the `354` reply to `DATA`. The caller owns a
//! buffer of received-but-unconsumed bytes and repeatedly calls
//! [`DataDecoder::decode`] with it; every call reports how many bytes at the
//! front of the buffer were used up (`consumed`), and the caller drops those
//! bytes before the next call, appending newly received bytes at the end.
//!
//! * A *line start* is the very first byte of the body or the byte after a
//!   CR LF pair. A bare LF or a bare CR never starts a line.
//! * The body ends **only** at `.` CR LF at a line start. Every other
//!   sequence (`LF . LF`, `LF . CR LF`, `CR LF . LF`, `CR . CR`, ...) is body
//!   content; this is what defeats "SMTP smuggling" (2023). Bare LF and bare
//!   CR are reported through flags, never acted upon.
//! * A `.` at a line start that is not followed by CR LF is a stuffed dot and
//!   is removed (RFC 5321 §4.5.2); the rest of the line is body.
//! * The CR LF that precedes the terminating `.` CR LF is part of the body.
//! * Bytes whose meaning depends on input not yet received (a trailing CR, a
//!   `.` or `.` CR at a line start) are left unconsumed; everything else is
//!   decided and reported. With at least 3 bytes of input a call always makes
//!   progress.
//! * The decoded body, the end position and the flags do not depend on how
//!   the input is split across calls.
//!
//! [`dot_stuff`] is the client-side inverse, and [`LineChecker`] applies the
//! same line-ending checks to BDAT chunks (RFC 3030), which carry no dots.
//!
//! # Implementation
//!
//! Both scanners have two paths that produce identical results:
//!
//! * a *fast path* that verifies whole blocks of ordinary text at once: it
//!   compares every byte with its successor (and, for DATA, the one after),
//!   in fixed-size sub-blocks that the compiler turns into SIMD code. A
//!   block is accepted only if every CR is followed by LF, every LF is
//!   preceded by CR, no line starts with a dot and no line can be too long;
//!   it then needs no per-line work at all;
//! * a *slow path* that walks CR and LF occurrences one by one with
//!   [`memchr2`] and handles everything else (bare CR/LF, dots, long lines,
//!   the undecided tail).
//!
//! After a fast-path attempt that makes no progress, the fast path is
//! skipped for a while (exponential back-off), so odd inputs cost little
//! more than the slow path alone.

use memchr::{memchr2, memmem, memrchr};

/// Sub-block size of the fast path, in bytes.
const SUB: usize = 128;
/// Smallest back-off after a fruitless fast-path attempt, in bytes.
const MIN_BACKOFF: usize = 4 * SUB;
/// Largest back-off after repeated fruitless fast-path attempts, in bytes.
const MAX_BACKOFF: usize = 64 * 1024;

/// Streaming decoder for a DATA body (RFC 5321 §4.1.1.4, §4.5.2).
///
/// See the [module documentation](self) for the contract.
#[derive(Debug, Clone)]
pub struct DataDecoder {
    /// Maximum line length in octets, CR LF included.
    max_line_len: usize,
    /// The next unconsumed byte is at a line start.
    line_start: bool,
    /// Decoded octets of the current line emitted so far.
    line_len: usize,
    /// The terminator has been seen.
    done: bool,
    bare_lf: bool,
    bare_cr: bool,
    long_line: bool,
    body_len: u64,
    backoff: Backoff,
}

/// What one call to [`DataDecoder::decode`] produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeStep {
    /// Body bytes `input[start..end]` (already dot-unstuffed: never contains
    /// a stuffed dot); `consumed` input bytes are used up (`consumed >= end`).
    Chunk {
        /// Offset in `input` of the first body byte.
        start: usize,
        /// Offset in `input` one past the last body byte.
        end: usize,
        /// Number of input bytes used up by this call.
        consumed: usize,
    },
    /// Nothing to emit yet; `consumed` bytes were used (e.g. a stuffed dot);
    /// call again with more input.
    NeedMore {
        /// Number of input bytes used up by this call.
        consumed: usize,
    },
    /// End of data: `consumed` includes the final `.` CR LF. The body ends
    /// with the CR LF before the dot (that CR LF is part of the body).
    End {
        /// Number of input bytes used up by this call, terminator included.
        consumed: usize,
    },
}

/// Scan position within one call.
struct Cursor {
    /// Next byte to look at.
    pos: usize,
    /// Start of the current line's bytes within this call.
    seg: usize,
    /// Whether `seg` is a line start.
    seg_is_line_start: bool,
    /// Octets of the current line before `seg`.
    line_len: usize,
}

impl DataDecoder {
    /// Creates a decoder positioned at the start of a body.
    ///
    /// `max_line_len` is the maximum text line length in octets, CR LF
    /// included (RFC 5321 §4.5.3.1.6: 1000); it only drives
    /// [`saw_long_line`](Self::saw_long_line).
    pub fn new(max_line_len: usize) -> Self {
        DataDecoder {
            max_line_len,
            line_start: true,
            line_len: 0,
            done: false,
            bare_lf: false,
            bare_cr: false,
            long_line: false,
            body_len: 0,
            backoff: Backoff::default(),
        }
    }

    /// Decodes from the start of `input` (the unconsumed bytes).
    ///
    /// Returns at most one chunk per call; the caller drops `consumed` bytes
    /// and calls again. A chunk is as long as possible: it runs up to the next
    /// stuffed dot or the end of the decided input, across any number of
    /// lines. Once [`DecodeStep::End`] has been returned, every further call
    /// returns `End { consumed: 0 }` until [`reset`](Self::reset).
    pub fn decode(&mut self, input: &[u8]) -> DecodeStep {
        if self.done {
            return DecodeStep::End { consumed: 0 };
        }
        let mut start = 0;
        if self.line_start {
            match input {
                [] | [b'.'] | [b'.', b'\r'] => return DecodeStep::NeedMore { consumed: 0 },
                [b'.', b'\r', b'\n', ..] => {
                    self.done = true;
                    return DecodeStep::End { consumed: 3 };
                }
                [b'.', ..] => {
                    // Stuffed dot: dropped, the rest of the line is body.
                    start = 1;
                    self.line_start = false;
                }
                _ => {}
            }
        }
        let end = self.scan(input, start);
        if end > start {
            self.body_len += (end - start) as u64;
            DecodeStep::Chunk {
                start,
                end,
                consumed: end,
            }
        } else {
            DecodeStep::NeedMore { consumed: end }
        }
    }

    /// Scans body bytes from `input[start..]`, which is a line start iff
    /// `self.line_start`. Returns the end of the decided body bytes (a
    /// chunk never runs past a line-start dot) and updates the line state and
    /// the flags.
    fn scan(&mut self, input: &[u8], start: usize) -> usize {
        let mut cur = Cursor {
            pos: start,
            seg: start,
            seg_is_line_start: self.line_start,
            line_len: self.line_len,
        };
        loop {
            let mut until = cur.pos;
            if self.backoff.ready() && fast_eligible(input, cur.pos, self.max_line_len) {
                let line_len = cur.line_len.saturating_add(cur.pos - cur.seg);
                let (accepted, resume) =
                    fast_prefix::<true>(input, cur.pos, line_len, self.max_line_len);
                self.backoff.record(accepted > cur.pos);
                if accepted > cur.pos {
                    cur.pos = accepted;
                    cur.seg = accepted;
                    cur.seg_is_line_start = true;
                    cur.line_len = 0;
                    if matches!(input.get(accepted), None | Some(b'.')) {
                        return self.stop_at_line_start(accepted);
                    }
                }
                until = resume;
            }
            let from = cur.pos;
            let until = until.max(from.saturating_add(self.backoff.cooldown));
            let done = self.slow(input, &mut cur, until);
            self.backoff.spend(cur.pos - from);
            if let Some(end) = done {
                return end;
            }
        }
    }

    /// Walks CR/LF occurrences one by one until `cur.pos >= until` (at least
    /// one occurrence is handled). Returns `Some(end)` when the call is over.
    fn slow(&mut self, input: &[u8], cur: &mut Cursor, until: usize) -> Option<usize> {
        loop {
            let found = input
                .get(cur.pos..)
                .and_then(|rest| memchr2(b'\r', b'\n', rest));
            let Some(off) = found else {
                return Some(self.tail(cur, input.len()));
            };
            let p = cur.pos + off;
            if input.get(p) == Some(&b'\n') {
                // An LF preceded by CR would have been found as that CR: the
                // byte before `cur.pos` is never an unconsumed-pair CR.
                self.bare_lf = true;
                cur.pos = p + 1;
            } else {
                match input.get(p + 1) {
                    None => return Some(self.tail(cur, p)),
                    Some(b'\n') => {
                        cur.pos = p + 2;
                        if cur.line_len.saturating_add(cur.pos - cur.seg) > self.max_line_len {
                            self.long_line = true;
                        }
                        cur.line_len = 0;
                        cur.seg = cur.pos;
                        cur.seg_is_line_start = true;
                        if matches!(input.get(cur.pos), None | Some(b'.')) {
                            return Some(self.stop_at_line_start(cur.pos));
                        }
                    }
                    Some(_) => {
                        self.bare_cr = true;
                        cur.pos = p + 1;
                    }
                }
            }
            if cur.pos >= until {
                return None;
            }
        }
    }

    /// Ends a call at a line start `end` (end of input or a line-start dot).
    fn stop_at_line_start(&mut self, end: usize) -> usize {
        self.line_start = true;
        self.line_len = 0;
        end
    }

    /// Ends a call whose decided bytes stop at `end`, within the current line.
    fn tail(&mut self, cur: &mut Cursor, end: usize) -> usize {
        cur.pos = end;
        if end > cur.seg {
            let line_len = cur.line_len.saturating_add(end - cur.seg);
            // Every body line ends with CR LF, so it is already known to be
            // too long once its content plus CR LF exceeds the limit.
            if line_len.saturating_add(2) > self.max_line_len {
                self.long_line = true;
            }
            self.line_len = line_len;
            self.line_start = false;
        } else {
            self.line_len = cur.line_len;
            self.line_start = cur.seg_is_line_start;
        }
        end
    }

    /// Whether an LF not preceded by CR was seen in the body.
    pub fn saw_bare_lf(&self) -> bool {
        self.bare_lf
    }

    /// Whether a CR not followed by LF was seen in the body.
    pub fn saw_bare_cr(&self) -> bool {
        self.bare_cr
    }

    /// Whether a line longer than `max_line_len` octets (CR LF included,
    /// counted after dot-unstuffing) was seen.
    pub fn saw_long_line(&self) -> bool {
        self.long_line
    }

    /// Octets of body emitted so far (after dot-unstuffing).
    pub fn body_len(&self) -> u64 {
        self.body_len
    }

    /// Whether the terminating `.` CR LF has been decoded.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Resets the decoder for the next message, keeping `max_line_len`.
    pub fn reset(&mut self) {
        *self = DataDecoder::new(self.max_line_len);
    }
}

/// Back-off state of the fast path.
#[derive(Debug, Clone, Copy, Default)]
struct Backoff {
    /// Bytes the slow path must still handle before the next fast attempt.
    cooldown: usize,
    /// Cooldown to impose after the next fruitless attempt.
    next: usize,
}

impl Backoff {
    /// Whether a fast-path attempt is allowed now.
    fn ready(&self) -> bool {
        self.cooldown == 0
    }

    /// Records the outcome of a fast-path attempt.
    fn record(&mut self, progressed: bool) {
        if progressed {
            self.next = 0;
        } else {
            self.next = (self.next * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
            self.cooldown = self.next;
        }
    }

    /// Accounts for `n` bytes handled by the slow path.
    fn spend(&mut self, n: usize) {
        self.cooldown = self.cooldown.saturating_sub(n);
    }
}

/// Whether the fast path can possibly accept anything at `pos`.
fn fast_eligible(input: &[u8], pos: usize, max_line_len: usize) -> bool {
    // Two line ends in adjacent sub-blocks must be provably close enough.
    max_line_len >= 2 * SUB
        && input.len().saturating_sub(pos) >= SUB + 2
        // An LF at `pos` would be bare (the byte before is never a CR that
        // pairs with it); leave it to the slow path.
        && input.get(pos) != Some(&b'\n')
}

/// Fast path: finds the longest prefix `input[pos..accepted]` that ends with
/// LF and in which every CR is followed by LF, every LF is preceded by CR,
/// no line (first line: `line_len` octets already counted) exceeds
/// `max_line_len` octets and, if `DOTS`, no line (after the first) starts
/// with a dot. Such a prefix needs no per-line work: it changes no flag.
///
/// Returns `(accepted, resume)`: the slow path should run at least up to
/// `resume` before the fast path is tried again (past whatever stopped it).
fn fast_prefix<const DOTS: bool>(
    input: &[u8],
    pos: usize,
    line_len: usize,
    max_line_len: usize,
) -> (usize, usize) {
    let rest = input.get(pos..).unwrap_or_default();
    let n = rest.len();
    if n < SUB + 2 {
        return (pos, pos);
    }
    // Pair i of the scan looks at x = rest[i], y = rest[i + 1], z = rest[i + 2].
    let xs = rest.get(..n - 2).unwrap_or_default().chunks_exact(SUB);
    let ys = rest.get(1..n - 1).unwrap_or_default().chunks_exact(SUB);
    let zs = rest.get(2..).unwrap_or_default().chunks_exact(SUB);
    // Sub-block `k` passes when its pairs are clean; its LFs sit at offsets
    // `k * SUB + 1 ..= (k + 1) * SUB`. A line between LFs in sub-blocks `j1`
    // and `j2` has at most `(j2 - j1 + 1) * SUB - 1` octets; the first line at
    // most `line_len + (j + 1) * SUB + 1`. `run` counts sub-blocks since the
    // last LF, `seen_lf` whether one was seen.
    let fits = |run: usize, seen_lf: bool| {
        if seen_lf {
            (run + 2) * SUB - 1 <= max_line_len
        } else {
            line_len.saturating_add((run + 1) * SUB + 1) <= max_line_len
        }
    };
    let mut passed = 0;
    let mut run = 0;
    let mut seen_lf = false;
    let mut stopped = false;
    for ((x, y), z) in xs.zip(ys).zip(zs) {
        let (Ok(x), Ok(y), Ok(z)) = (x.try_into(), y.try_into(), z.try_into()) else {
            // Unreachable: `chunks_exact` yields exactly `SUB` bytes.
            stopped = true;
            break;
        };
        let (clean, has_lf) = check_sub::<DOTS>(x, y, z);
        if !clean {
            stopped = true;
            break;
        }
        if has_lf {
            if !fits(run, seen_lf) {
                stopped = true;
                break;
            }
            seen_lf = true;
            run = 0;
        } else {
            run += 1;
            if !fits(run, seen_lf) {
                stopped = true;
                break;
            }
        }
        passed += 1;
    }
    let checked = passed * SUB;
    let resume = if stopped {
        pos + (checked + SUB + 2).min(n)
    } else {
        pos
    };
    if !seen_lf {
        return (pos, resume);
    }
    // The last verified LF ends the accepted prefix.
    match memrchr(b'\n', rest.get(..checked + 1).unwrap_or_default()) {
        Some(q) => (pos + q + 1, resume),
        None => (pos, resume),
    }
}

/// Checks one sub-block of pairs; returns `(clean, has_lf)`.
#[inline(always)]
fn check_sub<const DOTS: bool>(x: &[u8; SUB], y: &[u8; SUB], z: &[u8; SUB]) -> (bool, bool) {
    // Branch-free and fixed-size so that it compiles to SIMD compares.
    let mut bad = 0u8;
    let mut lf = 0u8;
    for i in 0..SUB {
        let cr = x[i] == b'\r';
        let is_lf = y[i] == b'\n';
        let mut wrong = cr ^ is_lf;
        if DOTS {
            wrong |= cr & (z[i] == b'.');
        }
        bad |= wrong as u8;
        lf |= is_lf as u8;
    }
    (bad == 0, lf != 0)
}

/// Appends `body` dot-stuffed for transmission after DATA, then the
/// terminator. If `body` does not end with CRLF, a CRLF is added first.
/// (Client side.)
///
/// A `.` is doubled at every line start, i.e. at the start of `body` and
/// after every CR LF. An empty `body` yields just the terminator (an empty
/// message). Bare CR and bare LF are copied as they are: a sender that must
/// not emit them should check the body first (e.g. with [`LineChecker`]).
pub fn dot_stuff(body: &[u8], out: &mut Vec<u8>) {
    out.reserve(body.len() + 6);
    if body.first() == Some(&b'.') {
        out.push(b'.');
    }
    let mut last = 0;
    for p in memmem::find_iter(body, b"\r\n.") {
        out.extend_from_slice(body.get(last..p + 2).unwrap_or_default());
        out.push(b'.');
        last = p + 2;
    }
    out.extend_from_slice(body.get(last..).unwrap_or_default());
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
}

/// Streaming [`dot_stuff`]: the same output for a body pushed in pieces
/// split anywhere. (Client side.)
///
/// Feed the body with [`DotStuffer::feed`], then call
/// [`DotStuffer::finish`] once for the CRLF (if the body did not end with
/// one) and the terminating `.` CR LF.
///
/// ```
/// use smtp_proto::data::{DotStuffer, dot_stuff};
///
/// let body = b"a\r\n.b\r\n.\r\n";
/// let mut whole = Vec::new();
/// dot_stuff(body, &mut whole);
/// let mut pieces = Vec::new();
/// let mut st = DotStuffer::new();
/// for piece in body.chunks(1) {
///     st.feed(piece, &mut pieces);
/// }
/// st.finish(&mut pieces);
/// assert_eq!(pieces, whole);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DotStuffer {
    /// Where the previous piece left off.
    state: StuffState,
    /// Nothing has been fed yet.
    empty: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StuffState {
    /// At a line start (the start of the body, or after CR LF).
    LineStart,
    /// Just after a CR.
    AfterCr,
    /// Anywhere else.
    Mid,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of a body.
    pub fn new() -> Self {
        DotStuffer {
            state: StuffState::LineStart,
            empty: true,
        }
    }

    /// Appends the next piece of the body to `out`, dot-stuffed.
    pub fn feed(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        if piece.is_empty() {
            return;
        }
        self.empty = false;
        out.reserve(piece.len() + 1);
        // A line start at the front of this piece (the previous piece may
        // have ended with the CR LF, or with the CR of it).
        let front = match (self.state, piece) {
            (StuffState::LineStart, [b'.', ..]) => Some(0),
            (StuffState::AfterCr, [b'\n', b'.', ..]) => Some(1),
            _ => None,
        };
        let mut last = 0;
        if let Some(p) = front {
            out.extend_from_slice(piece.get(..p).unwrap_or_default());
            out.push(b'.');
            last = p;
        }
        for p in memmem::find_iter(piece, b"\r\n.") {
            out.extend_from_slice(piece.get(last..p + 2).unwrap_or_default());
            out.push(b'.');
            last = p + 2;
        }
        out.extend_from_slice(piece.get(last..).unwrap_or_default());
        self.state = match (self.state, piece) {
            (_, [.., b'\r', b'\n']) | (StuffState::AfterCr, [b'\n']) => StuffState::LineStart,
            (_, [.., b'\r']) => StuffState::AfterCr,
            _ => StuffState::Mid,
        };
    }

    /// Appends CR LF if the body so far does not end with one (and is not
    /// empty), then the terminator `.` CR LF; the stuffer is then ready for
    /// a new body.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.empty && self.state != StuffState::LineStart {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        *self = DotStuffer::new();
    }
}

/// Incremental line-ending checker for BDAT chunks (no dot handling): flags
/// bare LF, bare CR and long lines across chunk boundaries.
///
/// A line is everything from a line start up to and including the next
/// CR LF, or up to the end of the data for a final unterminated line; its
/// length is counted in octets as received.
#[derive(Debug, Clone)]
pub struct LineChecker {
    max_line_len: usize,
    /// The previous chunk ended with a CR whose fate is not known yet.
    pending_cr: bool,
    /// Octets of the current line seen so far (a pending CR included).
    line_len: usize,
    bare_lf: bool,
    bare_cr: bool,
    long_line: bool,
    backoff: Backoff,
}

impl LineChecker {
    /// Creates a checker; `max_line_len` counts octets including CR LF.
    pub fn new(max_line_len: usize) -> Self {
        LineChecker {
            max_line_len,
            pending_cr: false,
            line_len: 0,
            bare_lf: false,
            bare_cr: false,
            long_line: false,
            backoff: Backoff::default(),
        }
    }

    /// Checks the next chunk of data.
    pub fn feed(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        let max = self.max_line_len;
        let mut line_len = self.line_len;
        let mut seg = 0;
        let mut pos = 0;
        if self.pending_cr {
            self.pending_cr = false;
            if chunk.first() == Some(&b'\n') {
                if line_len.saturating_add(1) > max {
                    self.long_line = true;
                }
                line_len = 0;
                seg = 1;
                pos = 1;
            } else {
                self.bare_cr = true;
            }
        }
        loop {
            let mut until = pos;
            if self.backoff.ready() && fast_eligible(chunk, pos, max) {
                let current = line_len.saturating_add(pos - seg);
                let (accepted, resume) = fast_prefix::<false>(chunk, pos, current, max);
                self.backoff.record(accepted > pos);
                if accepted > pos {
                    pos = accepted;
                    seg = accepted;
                    line_len = 0;
                }
                until = resume;
            }
            let from = pos;
            let until = until.max(from.saturating_add(self.backoff.cooldown));
            let finished = loop {
                let found = chunk
                    .get(pos..)
                    .and_then(|rest| memchr2(b'\r', b'\n', rest));
                let Some(off) = found else {
                    break true;
                };
                let p = pos + off;
                if chunk.get(p) == Some(&b'\n') {
                    self.bare_lf = true;
                    pos = p + 1;
                } else {
                    match chunk.get(p + 1) {
                        None => {
                            self.pending_cr = true;
                            break true;
                        }
                        Some(b'\n') => {
                            pos = p + 2;
                            if line_len.saturating_add(pos - seg) > max {
                                self.long_line = true;
                            }
                            line_len = 0;
                            seg = pos;
                        }
                        Some(_) => {
                            self.bare_cr = true;
                            pos = p + 1;
                        }
                    }
                }
                if pos >= until {
                    break false;
                }
            };
            self.backoff.spend(pos - from);
            if finished {
                break;
            }
        }
        line_len = line_len.saturating_add(chunk.len() - seg);
        if line_len > max {
            self.long_line = true;
        }
        self.line_len = line_len;
    }

    /// Marks the end of all data: a trailing CR is a bare CR.
    pub fn finish(&mut self) {
        if self.pending_cr {
            self.pending_cr = false;
            self.bare_cr = true;
        }
    }

    /// Whether an LF not preceded by CR was seen.
    pub fn saw_bare_lf(&self) -> bool {
        self.bare_lf
    }

    /// Whether a CR not followed by LF was seen (a trailing CR counts only
    /// after [`finish`](Self::finish)).
    pub fn saw_bare_cr(&self) -> bool {
        self.bare_cr
    }

    /// Whether a line longer than `max_line_len` octets (CR LF included) was
    /// seen.
    pub fn saw_long_line(&self) -> bool {
        self.long_line
    }

    /// Resets the checker for the next message, keeping `max_line_len`.
    pub fn reset(&mut self) {
        *self = LineChecker::new(self.max_line_len);
    }
}
