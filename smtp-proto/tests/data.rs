//! Tests for the DATA body decoder, `dot_stuff` and `LineChecker`.
#![allow(clippy::unwrap_used)]
//!
//! The streaming decoder is compared with a deliberately naive reference
//! decoder over arbitrary inputs and arbitrary ways of splitting them.

use proptest::prelude::*;
use smtp_proto::data::*;

/// Everything observable about one decoding run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Outcome {
    body: Vec<u8>,
    /// Offset just past the terminator, if one was found.
    end: Option<usize>,
    bare_lf: bool,
    bare_cr: bool,
    long_line: bool,
}

/// Feeds `input` to a fresh decoder in pieces of the given sizes (cycled;
/// empty = all at once), the way a server would: new bytes are appended to
/// the unconsumed tail. Checks the API contract along the way.
fn stream(input: &[u8], sizes: &[usize], max: usize) -> Outcome {
    let mut dec = DataDecoder::new(max);
    let mut out = Outcome::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut consumed_total = 0;
    let mut piece = 0;
    'feed: loop {
        let size = if sizes.is_empty() {
            input.len()
        } else {
            sizes[piece % sizes.len()].max(1)
        };
        piece += 1;
        let next = (fed + size).min(input.len());
        buf.extend_from_slice(&input[fed..next]);
        fed = next;
        loop {
            match dec.decode(&buf) {
                DecodeStep::Chunk {
                    start,
                    end,
                    consumed,
                } => {
                    assert!(start < end, "empty chunk {start}..{end}");
                    assert!(end <= consumed && consumed <= buf.len());
                    out.body.extend_from_slice(&buf[start..end]);
                    buf.drain(..consumed);
                    consumed_total += consumed;
                }
                DecodeStep::NeedMore { consumed } => {
                    assert!(consumed <= buf.len());
                    assert!(
                        buf.len() < 3 || consumed > 0,
                        "no progress on {:?}",
                        String::from_utf8_lossy(&buf)
                    );
                    buf.drain(..consumed);
                    consumed_total += consumed;
                    if consumed == 0 {
                        break;
                    }
                }
                DecodeStep::End { consumed } => {
                    assert!(consumed <= buf.len());
                    consumed_total += consumed;
                    out.end = Some(consumed_total);
                    assert!(dec.is_done());
                    assert_eq!(
                        dec.decode(&buf[consumed..]),
                        DecodeStep::End { consumed: 0 }
                    );
                    break 'feed;
                }
            }
        }
        if fed == input.len() {
            // Only an undecided tail may remain: a CR, or `.`/`.` CR at a
            // line start.
            assert!(buf.len() <= 2, "left {:?}", String::from_utf8_lossy(&buf));
            break;
        }
    }
    assert_eq!(dec.body_len(), out.body.len() as u64);
    out.bare_lf = dec.saw_bare_lf();
    out.bare_cr = dec.saw_bare_cr();
    out.long_line = dec.saw_long_line();
    out
}

/// The naive reference decoder the fuzz oracle checks against
/// (`smtp_fuzz_oracles::reference_decode`, one copy for both).
fn reference(input: &[u8], max: usize) -> Outcome {
    let r = smtp_fuzz_oracles::reference_decode(input, max);
    Outcome {
        body: r.body,
        end: r.end,
        bare_lf: r.bare_lf,
        bare_cr: r.bare_cr,
        long_line: r.long,
    }
}

/// Decodes `input` all at once and byte by byte, checks both agree, and
/// returns the outcome.
fn decode(input: &[u8], max: usize) -> Outcome {
    let whole = stream(input, &[], max);
    assert_eq!(whole, stream(input, &[1], max), "byte-by-byte differs");
    assert_eq!(whole, reference(input, max), "reference differs");
    whole
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn empty_message() {
    let out = decode(b".\r\n", 1000);
    assert_eq!(out.end, Some(3));
    assert!(out.body.is_empty());
    assert!(!out.bare_lf && !out.bare_cr && !out.long_line);
}

#[test]
fn one_line() {
    let out = decode(b"hello\r\n.\r\n", 1000);
    assert_eq!(out.body, b"hello\r\n");
    assert_eq!(out.end, Some(10));
}

#[test]
fn stuffed_dots() {
    let out = decode(b"..\r\n.x\r\n..y\r\na.b\r\n.\r\n", 1000);
    assert_eq!(out.body, b".\r\nx\r\n.y\r\na.b\r\n");
    assert_eq!(out.end, Some(21));
    // A line of only "..": one dot of body, not the end.
    let out = decode(b"..\r\n.\r\n", 1000);
    assert_eq!(out.body, b".\r\n");
    assert_eq!(out.end, Some(7));
}

#[test]
fn stuffed_dot_then_bare_cr() {
    let out = decode(b"a\r\n.\rb\r\n.\r\n", 1000);
    assert_eq!(out.body, b"a\r\n\rb\r\n");
    assert!(out.bare_cr && !out.bare_lf);
}

#[test]
fn smuggling_variants_are_body() {
    let variants: [(&[u8], bool, bool); 7] = [
        // (sequence after "hello", bare LF, bare CR)
        (b"\n.\n", true, false),
        (b"\n.\r\n", true, false),
        (b"\r\n.\n", true, false),
        (b"\r.\r", false, true),
        (b"\r\n.\rX", false, true),
        (b"\r.\r\n", false, true),
        (b"\r\n.\r\r\n", false, true),
    ];
    for (seq, bare_lf, bare_cr) in variants {
        let mut input = b"Subject: hi\r\n\r\nhello".to_vec();
        input.extend_from_slice(seq);
        input.extend_from_slice(b"MAIL FROM:<x>\r\n");
        input.extend_from_slice(b"\r\n.\r\n");
        let out = decode(&input, 1000);
        let shown = String::from_utf8_lossy(seq);
        assert_eq!(out.end, Some(input.len()), "{shown:?}");
        assert!(contains(&out.body, b"MAIL FROM:<x>\r\n"), "{shown:?}");
        assert!(out.body.ends_with(b"MAIL FROM:<x>\r\n\r\n"), "{shown:?}");
        assert_eq!((out.bare_lf, out.bare_cr), (bare_lf, bare_cr), "{shown:?}");
    }
}

#[test]
fn smuggled_end_without_real_end_never_ends() {
    for seq in [
        &b"x\n.\n"[..],
        b"x\n.\r\n",
        b"x\r\n.\n",
        b"x\r.\r",
        b"x\r\n.\rX",
        b"x\r.\r\n",
    ] {
        let out = decode(seq, 1000);
        assert_eq!(out.end, None, "{:?}", String::from_utf8_lossy(seq));
    }
}

#[test]
fn long_lines() {
    let line = |n: usize| {
        let mut v = vec![b'a'; n];
        v.extend_from_slice(b"\r\n");
        v
    };
    // Exactly the maximum (CR LF included) is fine, one more is long.
    let mut ok = line(18);
    ok.extend_from_slice(b".\r\n");
    assert!(!decode(&ok, 20).long_line);
    let mut long = line(19);
    long.extend_from_slice(b".\r\n");
    assert!(decode(&long, 20).long_line);
    // Counted after unstuffing: ".aaa..." decodes to one octet less.
    let mut stuffed = b".".to_vec();
    stuffed.extend_from_slice(&line(18));
    stuffed.extend_from_slice(b".\r\n");
    assert!(!decode(&stuffed, 20).long_line);
    // The same at the standard limit, among many short lines (fast path).
    for (n, is_long) in [(998, false), (999, true)] {
        let mut input = Vec::new();
        for _ in 0..100 {
            input.extend_from_slice(&line(76));
        }
        input.extend_from_slice(&line(n));
        for _ in 0..100 {
            input.extend_from_slice(&line(76));
        }
        input.extend_from_slice(b".\r\n");
        assert_eq!(decode(&input, 1000).long_line, is_long, "{n}");
        for sizes in [&[7usize][..], &[100], &[1000, 3], &[4096]] {
            assert_eq!(
                stream(&input, sizes, 1000).long_line,
                is_long,
                "{n} {sizes:?}"
            );
        }
    }
}

#[test]
fn crlf_before_dot_is_body() {
    // A dot that is not at a line start never ends the data...
    let out = decode(b"abc.\r\n", 1000);
    assert_eq!(out.end, None);
    assert_eq!(out.body, b"abc.\r\n");
    // ...so the body always ends with the CR LF before the terminator.
    let out = decode(b"abc.\r\n.\r\n", 1000);
    assert_eq!(out.end, Some(9));
    assert_eq!(out.body, b"abc.\r\n");
    let out = decode(b"abc\r\n\r\n.\r\n", 1000);
    assert_eq!(out.body, b"abc\r\n\r\n");
}

#[test]
fn ambiguous_tails_are_kept() {
    let mut dec = DataDecoder::new(1000);
    assert_eq!(dec.decode(b""), DecodeStep::NeedMore { consumed: 0 });
    assert_eq!(dec.decode(b"."), DecodeStep::NeedMore { consumed: 0 });
    assert_eq!(dec.decode(b".\r"), DecodeStep::NeedMore { consumed: 0 });
    assert_eq!(dec.decode(b"\r"), DecodeStep::NeedMore { consumed: 0 });
    assert_eq!(
        dec.decode(b"ab\r"),
        DecodeStep::Chunk {
            start: 0,
            end: 2,
            consumed: 2
        }
    );
    assert_eq!(
        dec.decode(b"\r\n.\r"),
        DecodeStep::Chunk {
            start: 0,
            end: 2,
            consumed: 2
        }
    );
    assert_eq!(dec.decode(b".\r"), DecodeStep::NeedMore { consumed: 0 });
    assert_eq!(dec.decode(b".\r\nMAIL"), DecodeStep::End { consumed: 3 });
    assert_eq!(dec.decode(b"MAIL"), DecodeStep::End { consumed: 0 });
    assert_eq!(dec.body_len(), 4);
    dec.reset();
    assert!(!dec.is_done());
    assert_eq!(dec.body_len(), 0);
    assert_eq!(
        dec.decode(b".x\r\n"),
        DecodeStep::Chunk {
            start: 1,
            end: 4,
            consumed: 4
        }
    );
}

#[test]
fn chunks_are_maximal() {
    let mut dec = DataDecoder::new(1000);
    let input = b"a\r\nb\r\nc\n.d\r\n..e\r\n.\r\n";
    // Up to (not including) the first line-start dot.
    assert_eq!(
        dec.decode(input),
        DecodeStep::Chunk {
            start: 0,
            end: 12,
            consumed: 12
        }
    );
    assert_eq!(
        dec.decode(&input[12..]),
        DecodeStep::Chunk {
            start: 1,
            end: 5,
            consumed: 5
        }
    );
    assert_eq!(dec.decode(&input[17..]), DecodeStep::End { consumed: 3 });
    assert!(dec.saw_bare_lf());
}

#[test]
fn trailing_data_after_end_is_not_consumed() {
    let input = b"a\r\n.\r\nMAIL FROM:<x>\r\n";
    let out = decode(input, 1000);
    assert_eq!(out.end, Some(6));
    assert_eq!(out.body, b"a\r\n");
}

#[test]
fn large_body_in_one_call() {
    let mut input = Vec::new();
    for i in 0..10_000 {
        input.extend_from_slice(format!("line {i:>70}\r\n").as_bytes());
    }
    let body_len = input.len();
    input.extend_from_slice(b".\r\n");
    let out = decode(&input, 1000);
    assert_eq!(out.end, Some(input.len()));
    assert_eq!(out.body.len(), body_len);
    assert!(!out.bare_cr && !out.bare_lf && !out.long_line);
    // An anomaly deep inside is still found, and so is the real end.
    for (at, seq, lf, cr) in [
        (50_000, &b"\n.\n"[..], true, false),
        (60_001, b"\r.\r", false, true),
        (70_000, b"\r\n..", false, false),
    ] {
        let mut bad = input.clone();
        let at = bad[..at]
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("a line end")
            - 1;
        bad.splice(at..at, seq.iter().copied());
        let out = decode(&bad, 1000);
        assert_eq!(out.end, Some(bad.len()));
        assert_eq!((out.bare_lf, out.bare_cr), (lf, cr));
    }
}

#[test]
fn anomaly_right_after_a_split() {
    // Each call may start with a fast block check; the first byte of a call
    // must be judged like any other.
    let mut lines = Vec::new();
    for i in 0..200 {
        lines.extend_from_slice(format!("line {i:>20}\r\n").as_bytes());
    }
    for (seq, lf, cr) in [
        (&b"\n"[..], true, false),
        (b"\rx", false, true),
        (b"..x\r\n", false, false),
        (b"\n.\r\n", true, false),
    ] {
        let mut input = b"first\r\n".to_vec();
        let split = input.len();
        input.extend_from_slice(seq);
        input.extend_from_slice(&lines);
        input.extend_from_slice(b".\r\n");
        let expected = reference(&input, 1000);
        assert_eq!((expected.bare_lf, expected.bare_cr), (lf, cr));
        assert_eq!(stream(&input, &[split, 100_000], 1000), expected);
        assert_eq!(stream(&input, &[split + 1, 100_000], 1000), expected);
        let mut lc = LineChecker::new(1000);
        lc.feed(&input[..split]);
        lc.feed(&input[split..]);
        lc.finish();
        let want = line_reference(&input, 1000);
        assert_eq!(
            (lc.saw_bare_lf(), lc.saw_bare_cr(), lc.saw_long_line()),
            want
        );
    }
}

#[test]
fn dot_stuff_examples() {
    let mut out = Vec::new();
    dot_stuff(b".a\r\n..\r\n.\r\nb.\r\n", &mut out);
    assert_eq!(out, b"..a\r\n...\r\n..\r\nb.\r\n.\r\n");
    out.clear();
    dot_stuff(b"no newline", &mut out);
    assert_eq!(out, b"no newline\r\n.\r\n");
    out.clear();
    dot_stuff(b"", &mut out);
    assert_eq!(out, b".\r\n");
    out.clear();
    dot_stuff(b"\r\n", &mut out);
    assert_eq!(out, b"\r\n.\r\n");
}

/// Reference line checker: whole data, simple loops.
/// The oracle's reference line check (one copy for the fuzz target and here).
fn line_reference(data: &[u8], max: usize) -> (bool, bool, bool) {
    smtp_fuzz_oracles::line_facts(data, max)
}

fn line_stream(data: &[u8], sizes: &[usize], max: usize) -> (bool, bool, bool) {
    let mut lc = LineChecker::new(max);
    let mut pos = 0;
    let mut piece = 0;
    while pos < data.len() {
        let size = sizes
            .get(piece % sizes.len().max(1))
            .copied()
            .unwrap_or(data.len());
        piece += 1;
        let next = (pos + size.max(1)).min(data.len());
        lc.feed(&data[pos..next]);
        lc.feed(&[]);
        pos = next;
    }
    lc.finish();
    (lc.saw_bare_lf(), lc.saw_bare_cr(), lc.saw_long_line())
}

#[test]
fn line_checker_examples() {
    assert_eq!(
        line_stream(b"a\r\nb\r\n", &[1], 1000),
        (false, false, false)
    );
    assert_eq!(line_stream(b"a\nb\r\n", &[1], 1000), (true, false, false));
    assert_eq!(line_stream(b"a\r", &[1], 1000), (false, true, false));
    assert_eq!(line_stream(b"a\rb", &[2], 1000), (false, true, false));
    assert_eq!(line_stream(b"aaa\r\n", &[1], 5), (false, false, false));
    assert_eq!(line_stream(b"aaaa\r\n", &[3], 5), (false, false, true));
    let mut lc = LineChecker::new(1000);
    lc.feed(b"x\r");
    assert!(!lc.saw_bare_cr());
    lc.feed(b"\n");
    lc.finish();
    assert!(!lc.saw_bare_cr());
    lc.reset();
    lc.feed(b"\n");
    assert!(lc.saw_bare_lf());
}

/// A byte biased towards the interesting ones.
fn biased_byte() -> impl Strategy<Value = u8> {
    prop_oneof![
        4 => Just(b'\r'),
        4 => Just(b'\n'),
        3 => Just(b'.'),
        2 => Just(b'a'),
        2 => any::<u8>(),
    ]
}

/// One line of mostly ordinary text with occasional oddities.
fn line() -> impl Strategy<Value = Vec<u8>> {
    let content = prop_oneof![
        8 => prop::collection::vec(b'a'..=b'z', 0..100),
        1 => prop::collection::vec(b' '..=b'~', 100..1100),
        2 => prop::collection::vec(biased_byte(), 0..12),
    ];
    let ending = prop_oneof![
        40 => Just(&b"\r\n"[..]),
        1 => Just(&b"\n"[..]),
        1 => Just(&b"\r"[..]),
        1 => Just(&b""[..]),
        1 => Just(&b"\r\r\n"[..]),
    ];
    (prop::bool::weighted(0.05), content, ending).prop_map(|(dot, content, ending)| {
        let mut v = Vec::new();
        if dot {
            v.push(b'.');
        }
        v.extend_from_slice(&content);
        v.extend_from_slice(ending);
        v
    })
}

/// An input: a body (random bytes or random lines), maybe a terminator,
/// maybe more bytes after it.
fn input() -> impl Strategy<Value = Vec<u8>> {
    let body = prop_oneof![
        prop::collection::vec(biased_byte(), 0..200),
        prop::collection::vec(line(), 0..120).prop_map(|lines| lines.concat()),
    ];
    let terminator = prop_oneof![Just(&b""[..]), Just(&b".\r\n"[..]), Just(&b"\r\n.\r\n"[..]),];
    let after = prop::collection::vec(biased_byte(), 0..8);
    (body, terminator, after).prop_map(|(mut body, terminator, after)| {
        body.extend_from_slice(terminator);
        body.extend_from_slice(&after);
        body
    })
}

fn sizes() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        prop::collection::vec(1usize..8, 1..10),
        prop::collection::vec(1usize..300, 1..10),
        prop::collection::vec(100usize..5000, 1..4),
    ]
}

fn max_line_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        3 => Just(1000usize),
        1 => 0usize..40,
        1 => 250usize..1100,
        1 => Just(usize::MAX),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1500))]

    #[test]
    fn matches_reference(input in input(), sizes in sizes(), max in max_line_len()) {
        let expected = reference(&input, max);
        prop_assert_eq!(&stream(&input, &sizes, max), &expected);
        prop_assert_eq!(&stream(&input, &[], max), &expected);
    }

    #[test]
    fn line_checker_matches_reference(
        data in prop_oneof![
            prop::collection::vec(biased_byte(), 0..200),
            prop::collection::vec(line(), 0..120).prop_map(|lines| lines.concat()),
        ],
        sizes in sizes(),
        max in max_line_len(),
    ) {
        let expected = line_reference(&data, max);
        prop_assert_eq!(line_stream(&data, &sizes, max), expected);
        prop_assert_eq!(line_stream(&data, &[], max), expected);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn dot_stuff_round_trip(
        lines in prop::collection::vec(
            prop_oneof![
                3 => prop::collection::vec(
                    prop_oneof![3 => Just(b'.'), 1 => any::<u8>()], 0..6),
                1 => prop::collection::vec(any::<u8>(), 0..400),
            ],
            0..60,
        ),
        sizes in sizes(),
        max in max_line_len(),
    ) {
        let mut body = Vec::new();
        let mut long = false;
        for mut line in lines {
            for b in &mut line {
                if *b == b'\r' || *b == b'\n' {
                    *b = b'x';
                }
            }
            long |= line.len() + 2 > max;
            body.extend_from_slice(&line);
            body.extend_from_slice(b"\r\n");
        }
        let mut wire = Vec::new();
        dot_stuff(&body, &mut wire);
        let out = stream(&wire, &sizes, max);
        prop_assert_eq!(&out.body, &body);
        prop_assert_eq!(out.end, Some(wire.len()));
        prop_assert!(!out.bare_lf && !out.bare_cr);
        prop_assert_eq!(out.long_line, long);
    }
}
