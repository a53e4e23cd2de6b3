//! Regressions found by the fuzz targets (`fuzz/`), one test per bug, each
//! with the smallest input that showed it.
#![allow(clippy::unwrap_used)]

use smtp_proto::reply::{EnhancedCode, Reply, parse_reply};

/// `reply_parser`: a text line that is only a CR (text written with CRLF
/// separators, `"a\r\n\r\nb"`) left a trailing space after the enhanced
/// code, so the wire form changed when parsed and written again.
#[test]
fn reply_cr_only_line_has_no_trailing_space() {
    let r = Reply::new(250, EnhancedCode::new(2, 0, 0), "a\r\n\r\nb");
    let wire = r.to_bytes();
    assert_eq!(wire, b"250-2.0.0 a\r\n250-2.0.0\r\n250 2.0.0 b\r\n");
    let (parsed, n) = parse_reply(&wire, 512).unwrap().unwrap();
    assert_eq!(n, wire.len());
    assert_eq!(parsed.to_bytes(), wire);
}
