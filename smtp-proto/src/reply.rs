//! Typed SMTP replies: a code, an enhanced status code (RFC 3463) and text.
//!
//! Multi-line formatting (RFC 5321 §4.2.1) is done here: a reply's text may
//! hold several lines separated by `\n`; each is sent as `code-text` except the
//! last (`code text`), and each carries the enhanced status code when the
//! session advertises ENHANCEDSTATUSCODES (RFC 2034).
//!
//! [`parse_reply`] is the other side (for clients and tests).

use std::borrow::Cow;
use std::fmt;

/// An enhanced mail system status code `class.subject.detail` (RFC 3463).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject (0..=999).
    pub subject: u16,
    /// The detail (0..=999).
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code; see RFC 3463 §3 for the registry.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// Parses `"5.1.1"`; `None` if it is not a valid code.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('.');
        let class = it.next()?;
        let subject = it.next()?;
        let detail = it.next()?;
        if it.next().is_some() || class.len() != 1 || subject.len() > 3 || detail.len() > 3 {
            return None;
        }
        let class: u8 = class.parse().ok()?;
        if !matches!(class, 2 | 4 | 5) {
            return None;
        }
        let all_digits = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(subject) || !all_digits(detail) {
            return None;
        }
        Some(EnhancedCode {
            class,
            subject: subject.parse().ok()?,
            detail: detail.parse().ok()?,
        })
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply: a three-digit code, an optional enhanced code and text.
///
/// Codes outside `200..=599` are a programming error; they are sent as `451`
/// (with `4.3.0`) rather than corrupting the protocol. The enhanced code's
/// class is always made to agree with the reply code's first digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply without an enhanced status code (the greeting, EHLO lines).
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// A compile-time reply (for the named constants).
    pub const fn constant(code: u16, enhanced: EnhancedCode, text: &'static str) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: Cow::Borrowed(text),
        }
    }

    /// The three-digit code as it will be sent.
    pub fn code(&self) -> u16 {
        if (200..=599).contains(&self.code) {
            self.code
        } else {
            451
        }
    }

    /// The enhanced code as it will be sent (class fixed to the reply's class).
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        if !(200..=599).contains(&self.code) {
            return Some(EnhancedCode::new(4, 3, 0));
        }
        let class = (self.code / 100) as u8;
        let class = if class == 3 { 2 } else { class };
        self.enhanced.map(|e| EnhancedCode { class, ..e })
    }

    /// The text, lines separated by `\n`.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// `2xx` or `3xx`.
    pub fn is_positive(&self) -> bool {
        self.code() < 400
    }

    /// `4xx`.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code())
    }

    /// `5xx`.
    pub fn is_permanent(&self) -> bool {
        self.code() >= 500
    }

    /// Appends the wire form to `out`; `enhanced` says whether the session
    /// sends enhanced status codes. Control characters in the text are
    /// replaced so a reply can never inject a line.
    pub fn write_to(&self, out: &mut Vec<u8>, enhanced: bool) {
        let code = self.code();
        let ecode = if enhanced { self.enhanced() } else { None };
        let digits = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        out.reserve(self.text.len() + 16);
        let mut rest = self.text.as_bytes();
        loop {
            let (line, more) = match memchr::memchr(b'\n', rest) {
                Some(i) => (&rest[..i], rest.get(i + 1..)),
                None => (rest, None),
            };
            // A CR before the `\n` separator belongs to no line (and must
            // not leave a trailing space after the enhanced code).
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            out.extend_from_slice(&digits);
            out.push(if more.is_some() { b'-' } else { b' ' });
            if let Some(e) = ecode {
                write_enhanced(out, e);
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            let control = |b: &u8| *b < 0x20 || *b == 0x7f;
            if line.iter().any(control) {
                out.extend(line.iter().map(|b| if control(b) { b'?' } else { *b }));
            } else {
                out.extend_from_slice(line);
            }
            out.extend_from_slice(b"\r\n");
            match more {
                Some(r) => rest = r,
                None => break,
            }
        }
    }

    /// The wire form as a new vector (with enhanced codes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v, true);
        v
    }
}

fn write_enhanced(out: &mut Vec<u8>, e: EnhancedCode) {
    // By hand: `write!` costs several times more, on every reply.
    push_number(out, u16::from(e.class));
    out.push(b'.');
    push_number(out, e.subject);
    out.push(b'.');
    push_number(out, e.detail);
}

/// Appends `n` in decimal, without leading zeros.
fn push_number(out: &mut Vec<u8>, n: u16) {
    let mut buf = [0u8; 5];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Why [`parse_reply`] refused its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyError {
    /// A line does not start with three digits and a space or hyphen.
    Malformed,
    /// The lines of one reply carry different codes.
    MixedCodes,
    /// The reply is longer than the limit given.
    TooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplyError::Malformed => "malformed reply line",
            ReplyError::MixedCodes => "reply lines carry different codes",
            ReplyError::TooLong => "reply too long",
        })
    }
}

impl std::error::Error for ReplyError {}

/// Parses one (possibly multi-line) reply from the start of `input`.
///
/// Returns `Ok(None)` when more input is needed, or the reply and the number
/// of bytes it used. When every line starts with the same enhanced code
/// (RFC 2034), it is taken off the text. `max_len` bounds the reply. Text
/// that is not UTF-8 (a Latin-1 banner) is kept, its invalid bytes
/// replaced by U+FFFD.
pub fn parse_reply(input: &[u8], max_len: usize) -> Result<Option<(Reply, usize)>, ReplyError> {
    let mut pos = 0;
    let mut code = None;
    let mut lines: Vec<Cow<'_, str>> = Vec::new();
    loop {
        let rest = &input[pos..];
        let Some(nl) = memchr::memchr(b'\n', rest) else {
            if input.len() > max_len {
                return Err(ReplyError::TooLong);
            }
            return Ok(None);
        };
        if pos + nl + 1 > max_len {
            return Err(ReplyError::TooLong);
        }
        let line = &rest[..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += nl + 1;
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(ReplyError::Malformed);
        }
        let c = u16::from(line[0] - b'0') * 100
            + u16::from(line[1] - b'0') * 10
            + u16::from(line[2] - b'0');
        if !(200..=599).contains(&c) {
            return Err(ReplyError::Malformed);
        }
        if *code.get_or_insert(c) != c {
            return Err(ReplyError::MixedCodes);
        }
        let (more, text) = match line.get(3) {
            None => (false, &[][..]),
            Some(b' ') => (false, &line[4..]),
            Some(b'-') => (true, &line[4..]),
            Some(_) => return Err(ReplyError::Malformed),
        };
        // Servers in the wild send Latin-1 and worse: the text is kept,
        // invalid bytes replaced, rather than the reply refused.
        lines.push(String::from_utf8_lossy(text));
        if !more {
            break;
        }
    }
    let code = code.ok_or(ReplyError::Malformed)?;
    // Enhanced code: present on the first line and the same on every line.
    let first = lines.first().map_or("", |l| l.as_ref());
    let token = first.split(' ').next().unwrap_or("");
    // The class is the code's first digit; a 3xx reply carries class 2, as
    // `Reply::write_to` writes it.
    let class = match code / 100 {
        3 => 2,
        c => c,
    };
    let enhanced = EnhancedCode::parse(token).filter(|e| {
        u16::from(e.class) == class && lines.iter().all(|l| l.split(' ').next() == Some(token))
    });
    let mut text = String::new();
    for (i, l) in lines.iter().enumerate() {
        if i > 0 {
            text.push('\n');
        }
        let l = if enhanced.is_some() {
            l.get(token.len()..)
                .map(|s| s.strip_prefix(' ').unwrap_or(s))
                .unwrap_or("")
        } else {
            l
        };
        text.push_str(l);
    }
    Ok(Some((
        Reply {
            code,
            enhanced,
            text: Cow::Owned(text),
        },
        pos,
    )))
}

macro_rules! replies {
    ($($(#[$doc:meta])* $name:ident = $code:literal ($c:literal, $s:literal, $d:literal) $text:literal;)*) => {
        /// Named replies the core sends itself (each with its enhanced code).
        impl Reply {
            $(
                $(#[$doc])*
                pub const $name: Reply = Reply::constant($code, EnhancedCode::new($c, $s, $d), $text);
            )*
        }
    };
}

replies! {
    /// `250 2.0.0 OK`.
    OK = 250 (2, 0, 0) "OK";
    /// `250 2.1.0 Sender OK`.
    SENDER_OK = 250 (2, 1, 0) "Sender OK";
    /// `250 2.1.5 Recipient OK`.
    RECIPIENT_OK = 250 (2, 1, 5) "Recipient OK";
    /// `250 2.0.0 Message accepted for delivery`.
    MESSAGE_ACCEPTED = 250 (2, 0, 0) "Message accepted for delivery";
    /// `250 2.0.0 Flushed` (RSET).
    RESET_OK = 250 (2, 0, 0) "Flushed";
    /// `221 2.0.0 Bye`.
    BYE = 221 (2, 0, 0) "Bye";
    /// `220 2.0.0 Ready to start TLS`.
    READY_TLS = 220 (2, 0, 0) "Ready to start TLS";
    /// `235 2.7.0 Authentication successful`.
    AUTH_OK = 235 (2, 7, 0) "Authentication successful";
    /// `252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery`.
    CANNOT_VRFY = 252 (2, 5, 0) "Cannot VRFY user, but will accept message and attempt delivery";
    /// `354 2.0.0 End data with <CR><LF>.<CR><LF>` (the enhanced code is not sent on 3xx by most servers; kept for symmetry).
    START_DATA = 354 (2, 0, 0) "End data with <CR><LF>.<CR><LF>";
    /// `500 5.5.2 Syntax error, command unrecognized`.
    UNKNOWN_COMMAND = 500 (5, 5, 2) "Syntax error, command unrecognized";
    /// `500 5.5.2 Line too long`.
    LINE_TOO_LONG = 500 (5, 5, 2) "Line too long";
    /// `500 5.5.6 Authentication Exchange line is too long` (RFC 4954 §4).
    AUTH_LINE_TOO_LONG = 500 (5, 5, 6) "Authentication Exchange line is too long";
    /// `500 5.5.2 Bare LF or CR in command line; lines must end with CRLF`.
    BARE_LF_COMMAND = 500 (5, 5, 2) "Bare LF or CR in command line; lines must end with CRLF";
    /// `501 5.5.4 Syntax error in parameters or arguments`.
    SYNTAX_ERROR = 501 (5, 5, 4) "Syntax error in parameters or arguments";
    /// `501 5.1.7 Bad sender address syntax`.
    BAD_SENDER = 501 (5, 1, 7) "Bad sender address syntax";
    /// `501 5.1.3 Bad recipient address syntax`.
    BAD_RECIPIENT = 501 (5, 1, 3) "Bad recipient address syntax";
    /// `555 5.5.4 Unsupported or unadvertised parameter`.
    UNKNOWN_PARAMETER = 555 (5, 5, 4) "Unsupported or unadvertised MAIL/RCPT parameter";
    /// `501 5.5.4 Invalid parameter value`.
    BAD_PARAMETER = 501 (5, 5, 4) "Invalid parameter value";
    /// `553 5.6.7 Non-ASCII addresses require SMTPUTF8`.
    UTF8_NOT_PERMITTED = 553 (5, 6, 7) "Non-ASCII addresses require SMTPUTF8";
    /// `502 5.5.1 Command not implemented`.
    NOT_IMPLEMENTED = 502 (5, 5, 1) "Command not implemented";
    /// `503 5.5.1 Send HELO/EHLO first`.
    NEED_HELO = 503 (5, 5, 1) "Send HELO/EHLO first";
    /// `503 5.5.1 Send LHLO first`.
    NEED_LHLO = 503 (5, 5, 1) "Send LHLO first";
    /// `500 5.5.1 Use LHLO in LMTP mode`.
    USE_LHLO = 500 (5, 5, 1) "Use LHLO in LMTP mode";
    /// `503 5.5.1 Nested MAIL command`.
    NESTED_MAIL = 503 (5, 5, 1) "Nested MAIL command";
    /// `503 5.5.1 Need MAIL before RCPT`.
    NEED_MAIL = 503 (5, 5, 1) "Need MAIL command first";
    /// `503 5.5.1 Need RCPT before DATA`.
    NEED_RCPT = 503 (5, 5, 1) "Need RCPT command first";
    /// `554 5.5.1 No valid recipients`.
    NO_VALID_RECIPIENTS = 554 (5, 5, 1) "No valid recipients";
    /// `503 5.5.1 DATA and BDAT cannot be mixed in one transaction`.
    MIXED_DATA_BDAT = 503 (5, 5, 1) "DATA and BDAT cannot be mixed in one transaction";
    /// `503 5.5.1 BODY=BINARYMIME requires BDAT`.
    BINARYMIME_NEEDS_BDAT = 503 (5, 5, 1) "BODY=BINARYMIME requires BDAT";
    /// `452 4.5.3 Too many recipients`.
    TOO_MANY_RECIPIENTS = 452 (4, 5, 3) "Too many recipients";
    /// `552 5.3.4 Message size exceeds fixed maximum message size`.
    MESSAGE_TOO_BIG = 552 (5, 3, 4) "Message size exceeds fixed maximum message size";
    /// `550 5.5.2 Message rejected: bare LF or CR received; lines must end with CRLF`.
    BARE_LF_DATA = 550 (5, 5, 2) "Message rejected: bare LF or CR received; lines must end with CRLF";
    /// `550 5.6.0 Message rejected: NUL character received` (policy; a NUL
    /// can end a message for a receiver that drops it).
    NUL_DATA = 550 (5, 6, 0) "Message rejected: NUL character received";
    /// `550 5.6.0 Message rejected: a text line is too long`.
    DATA_LINE_TOO_LONG = 550 (5, 6, 0) "Message rejected: a text line is longer than allowed";
    /// `530 5.7.0 Must issue a STARTTLS command first`.
    TLS_REQUIRED = 530 (5, 7, 0) "Must issue a STARTTLS command first";
    /// `530 5.7.0 Authentication required`.
    AUTH_REQUIRED = 530 (5, 7, 0) "Authentication required";
    /// `554 5.5.1 TLS already active`.
    TLS_ALREADY_ACTIVE = 554 (5, 5, 1) "TLS already active";
    /// `454 4.7.0 TLS not available due to temporary reason`.
    TLS_NOT_AVAILABLE = 454 (4, 7, 0) "TLS not available due to temporary reason";
    /// `503 5.5.1 Already authenticated`.
    ALREADY_AUTHENTICATED = 503 (5, 5, 1) "Already authenticated";
    /// `503 5.5.1 AUTH not permitted during a mail transaction`.
    AUTH_IN_TRANSACTION = 503 (5, 5, 1) "AUTH not permitted during a mail transaction";
    /// `504 5.5.4 Unrecognized authentication type`.
    AUTH_MECHANISM_UNKNOWN = 504 (5, 5, 4) "Unrecognized authentication type";
    /// `535 5.7.8 Authentication credentials invalid`.
    AUTH_FAILED = 535 (5, 7, 8) "Authentication credentials invalid";
    /// `534 5.7.9 Authentication mechanism is too weak`.
    AUTH_TOO_WEAK = 534 (5, 7, 9) "Authentication mechanism is too weak";
    /// `538 5.7.11 Encryption required for requested authentication mechanism`.
    AUTH_NEEDS_TLS = 538 (5, 7, 11) "Encryption required for requested authentication mechanism";
    /// `501 5.0.0 Authentication cancelled`.
    AUTH_CANCELLED = 501 (5, 0, 0) "Authentication cancelled";
    /// `501 5.5.2 Invalid base64 data`.
    AUTH_BAD_BASE64 = 501 (5, 5, 2) "Invalid base64 data";
    /// `501 5.5.2 Malformed authentication response`.
    AUTH_MALFORMED = 501 (5, 5, 2) "Malformed authentication response";
    /// `454 4.7.0 Temporary authentication failure`.
    AUTH_TEMPORARY = 454 (4, 7, 0) "Temporary authentication failure";
    /// `421 4.4.2 Timeout, closing connection`.
    TIMEOUT = 421 (4, 4, 2) "Timeout exceeded, closing connection";
    /// `421 4.7.0 Too many errors, closing connection`.
    TOO_MANY_ERRORS = 421 (4, 7, 0) "Too many errors, closing connection";
    /// `554 5.5.0 Protocol violation (improper pipelining), closing connection`.
    PROTOCOL_VIOLATION = 554 (5, 5, 0) "Protocol violation, closing connection";
    /// `421 4.3.2 Service shutting down, closing connection`.
    SHUTTING_DOWN = 421 (4, 3, 2) "Service shutting down, closing connection";
    /// `421 4.3.0 Internal error, closing connection`.
    INTERNAL_ERROR = 421 (4, 3, 0) "Internal error, closing connection";
    /// `421 4.7.0 Too many connections, try again later`.
    TOO_MANY_CONNECTIONS = 421 (4, 7, 0) "Too many connections, try again later";
    /// `451 4.3.0 Temporary failure, try again later`.
    TEMPORARY_FAILURE = 451 (4, 3, 0) "Temporary failure, try again later";
    /// `550 5.1.1 Mailbox unavailable`.
    NO_SUCH_USER = 550 (5, 1, 1) "Mailbox unavailable";
    /// `550 5.7.1 Relay access denied`.
    RELAY_DENIED = 550 (5, 7, 1) "Relay access denied";
    /// `554 5.7.1 Access denied` (a client the access list refuses, at connect).
    ACCESS_DENIED = 554 (5, 7, 1) "Access denied";
    /// `503 5.5.1 No SMTP service here` (after a rejected connection).
    NO_SERVICE = 503 (5, 5, 1) "No SMTP service here";
    /// `550 5.7.0 Error: insufficient authorization` (XCLIENT or XFORWARD
    /// from a client outside the allowed networks).
    FORWARD_DENIED = 550 (5, 7, 0) "Error: insufficient authorization";
    /// `503 5.5.1 Error: MAIL transaction in progress` (XCLIENT or XFORWARD
    /// inside a transaction).
    FORWARD_IN_TRANSACTION = 503 (5, 5, 1) "Error: MAIL transaction in progress";
    /// `501 5.5.4 Bad XCLIENT or XFORWARD attribute value`.
    FORWARD_BAD_VALUE = 501 (5, 5, 4) "Bad attribute value";
    /// `250 2.0.0 Ok` (XFORWARD recorded).
    FORWARD_OK = 250 (2, 0, 0) "Ok";
    /// `214 2.0.0` help text.
    HELP = 214 (2, 0, 0) "Commands: HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_line_with_enhanced() {
        assert_eq!(Reply::SENDER_OK.to_bytes(), b"250 2.1.0 Sender OK\r\n");
        let mut v = Vec::new();
        Reply::SENDER_OK.write_to(&mut v, false);
        assert_eq!(v, b"250 Sender OK\r\n");
    }

    #[test]
    fn multi_line() {
        let r = Reply::plain(250, "mx.example\nPIPELINING\nSIZE 100");
        assert_eq!(
            r.to_bytes(),
            b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
    }

    #[test]
    fn class_is_fixed_and_bad_codes_become_451() {
        let r = Reply::new(550, EnhancedCode::new(4, 1, 1), "x");
        assert_eq!(r.to_bytes(), b"550 5.1.1 x\r\n");
        let r = Reply::new(999, EnhancedCode::new(2, 0, 0), "x");
        assert_eq!(r.to_bytes(), b"451 4.3.0 x\r\n");
    }

    #[test]
    fn no_injection() {
        let r = Reply::new(550, EnhancedCode::new(5, 0, 0), "a\r\nb\x00c");
        assert_eq!(r.to_bytes(), b"550-5.0.0 a\r\n550 5.0.0 b?c\r\n");
    }

    #[test]
    fn parse_round_trip() {
        let r = Reply::new(250, EnhancedCode::new(2, 1, 5), "one\ntwo");
        let bytes = r.to_bytes();
        let (p, n) = parse_reply(&bytes, 4096).unwrap().unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(p, r);
        assert_eq!(parse_reply(b"250-a\r\n25", 4096), Ok(None));
        assert_eq!(
            parse_reply(b"250-a\r\n251 b\r\n", 4096),
            Err(ReplyError::MixedCodes)
        );
        assert_eq!(parse_reply(b"25x a\r\n", 4096), Err(ReplyError::Malformed));
    }

    #[test]
    fn enhanced_codes_written_by_hand_match_format() {
        for (class, subject, detail) in [
            (2, 0, 0),
            (5, 7, 1),
            (4, 999, 999),
            (2, 10, 100),
            (5, 65535, 9),
        ] {
            let mut out = Vec::new();
            write_enhanced(
                &mut out,
                EnhancedCode {
                    class,
                    subject,
                    detail,
                },
            );
            assert_eq!(out, format!("{class}.{subject}.{detail}").into_bytes());
        }
    }

    #[test]
    fn write_to_splits_lines_and_neutralizes_controls() {
        let e = EnhancedCode::new(2, 0, 0);
        let wire = |text: &str, enhanced: bool| {
            let mut out = Vec::new();
            Reply::new(250, e, text.to_owned()).write_to(&mut out, enhanced);
            String::from_utf8(out).unwrap_or_default()
        };
        assert_eq!(wire("a\r\nb", true), "250-2.0.0 a\r\n250 2.0.0 b\r\n");
        assert_eq!(wire("a\n", true), "250-2.0.0 a\r\n250 2.0.0\r\n");
        assert_eq!(wire("", true), "250 2.0.0\r\n");
        assert_eq!(wire("", false), "250 \r\n");
        assert_eq!(wire("x\u{1}y\u{7f}\rz", false), "250 x?y??z\r\n");
    }

    #[test]
    fn text_that_is_not_utf8_is_kept_with_replacements() {
        // A Latin-1 banner, as some servers send.
        let (r, n) = parse_reply(b"220 mx.example caf\xe9 ESMTP\r\n", 4096)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(n, 27);
        assert_eq!(r.code(), 220);
        assert_eq!(r.text(), "mx.example caf\u{fffd} ESMTP");
        let (r, _) = parse_reply(b"250 2.1.0 \xff\r\n", 4096)
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("refused"));
        assert_eq!(r.enhanced(), Some(EnhancedCode::new(2, 1, 0)));
        assert_eq!(r.text(), "\u{fffd}");
    }
}
