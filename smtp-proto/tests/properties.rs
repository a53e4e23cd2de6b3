//! Property tests over the whole session: split invariance, no panics,
#![allow(clippy::unwrap_used)]
//! reply round trips.

mod common;

use common::{run_split, run_split_probing};
use proptest::prelude::*;
use smtp_proto::config::Config;
use smtp_proto::reply::{EnhancedCode, Reply, parse_reply};
use smtp_proto::sasl::Mechanism;

fn config() -> Config {
    let mut c = Config::new("mx.example");
    c.limits.max_message_size = 4096;
    c.limits.max_recipients = 3;
    c.limits.max_command_line = 128;
    c.extensions.starttls = true;
    c.auth.mechanisms = vec![Mechanism::Plain, Mechanism::Login];
    c.auth.allow_plaintext = true;
    c
}

/// Pieces of client input: valid commands, broken ones, body fragments
/// with every line-ending hazard. (Not STARTTLS: what follows it depends on
/// when it arrives, by design; `tests/session.rs` covers it.)
fn fragment() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"EHLO client.example\r\n".to_vec()),
        Just(b"HELO client.example\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.example>\r\n".to_vec()),
        Just(b"MAIL FROM:<> SIZE=100 BODY=8BITMIME\r\n".to_vec()),
        Just(b"RCPT TO:<x@y.example>\r\n".to_vec()),
        Just(b"RCPT TO:<nobody@y.example>\r\n".to_vec()),
        Just(b"RCPT TO:<Postmaster>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 5\r\nhello".to_vec()),
        Just(b"BDAT 3 LAST\r\nx\r\n".to_vec()),
        Just(b"RSET\r\n".to_vec()),
        Just(b"NOOP\r\n".to_vec()),
        Just(b"VRFY bob\r\n".to_vec()),
        Just(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n".to_vec()),
        Just(b"AUTH LOGIN\r\nYm9i\r\nc2VjcmV0\r\n".to_vec()),
        Just(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
        Just(b"..stuffed\r\n".to_vec()),
        Just(b".\r\n".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b"bare\n.\nlf\r\n".to_vec()),
        Just(b"bare\r.\rcr\r\n".to_vec()),
        Just(vec![b'L'; 300]),
        Just(b"GARBAGE\r\n".to_vec()),
        proptest::collection::vec(any::<u8>(), 0..40),
    ]
}

fn script() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(fragment(), 0..25).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// The same input, split anywhere, gives the same replies and events.
    #[test]
    fn split_invariance(input in script(), splits in proptest::collection::vec(any::<usize>(), 0..12)) {
        let cfg = config();
        let splits: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
        let (out_whole, log_whole) = run_split(&cfg, &input, &[]);
        let (out_split, log_split) = run_split(&cfg, &input, &splits);
        prop_assert_eq!(String::from_utf8_lossy(&out_whole), String::from_utf8_lossy(&out_split));
        prop_assert_eq!(log_whole, log_split);
    }

    /// `has_event` agrees with `poll_event` and changes nothing.
    #[test]
    fn has_event_is_transparent(input in script(), splits in proptest::collection::vec(any::<usize>(), 0..12)) {
        let cfg = config();
        let splits: Vec<usize> = splits.iter().map(|s| s % (input.len() + 1)).collect();
        let (a, la) = run_split_probing(&cfg, &input, &splits, false);
        let (b, lb) = run_split_probing(&cfg, &input, &splits, true);
        prop_assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
        prop_assert_eq!(la, lb);
    }

    /// Byte-at-a-time feeding is the extreme split.
    #[test]
    fn byte_at_a_time(input in script()) {
        let cfg = config();
        let all: Vec<usize> = (0..=input.len()).collect();
        let (a, la) = run_split(&cfg, &input, &[]);
        let (b, lb) = run_split(&cfg, &input, &all);
        prop_assert_eq!(a, b);
        prop_assert_eq!(la, lb);
    }

    /// Arbitrary bytes never panic the session, and output stays bounded.
    #[test]
    fn arbitrary_bytes_never_panic(input in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (out, _) = run_split(&config(), &input, &[]);
        // Every reply line is well formed.
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            prop_assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit), "{:?}", line);
            prop_assert_eq!(line.last(), Some(&b'\r'));
        }
    }

    /// Every message delivered was ended by CRLF.CRLF and contains no bare
    /// LF or CR (default policy).
    #[test]
    fn delivered_bodies_are_clean(input in script()) {
        let (_, log) = run_split(&config(), &input, &[]);
        for m in &log.messages {
            for (i, &b) in m.iter().enumerate() {
                if b == b'\n' {
                    prop_assert!(i > 0 && m[i - 1] == b'\r');
                }
                if b == b'\r' {
                    prop_assert_eq!(m.get(i + 1), Some(&b'\n'));
                }
            }
        }
    }

    /// Formatting then parsing a reply gives it back.
    #[test]
    fn reply_round_trip(
        code in 200u16..=599,
        subject in 0u16..=999,
        detail in 0u16..=999,
        lines in proptest::collection::vec("[ -~]{0,60}", 1..5),
        enhanced in any::<bool>(),
    ) {
        let text = lines.join("\n");
        // A line that itself starts like an enhanced code would be ambiguous.
        prop_assume!(!lines.iter().any(|l| l.starts_with(|c: char| c.is_ascii_digit())));
        let class = (code / 100) as u8;
        let class = if class == 3 { 2 } else { class };
        let reply = if enhanced && code / 100 != 3 {
            Reply::new(code, EnhancedCode::new(class, subject, detail), text.clone())
        } else {
            Reply::plain(code, text.clone())
        };
        let bytes = reply.to_bytes();
        let (parsed, used) = parse_reply(&bytes, 1 << 16).unwrap().unwrap();
        prop_assert_eq!(used, bytes.len());
        prop_assert_eq!(parsed.code(), code);
        prop_assert_eq!(parsed.enhanced(), reply.enhanced());
        prop_assert_eq!(parsed.text(), reply.text());
    }

    /// The reply parser never panics and never claims more than its input.
    #[test]
    fn reply_parser_total(input in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(Some((_, n))) = parse_reply(&input, 512) {
            prop_assert!(n <= input.len());
        }
    }
}
