//! The `Received:` trace header (RFC 5321 §4.4, RFC 3848, RFC 6531 §4.3).
//!
//! A server prepends one `Received:` line to every message it accepts.
//! [`ReceivedHeader`] holds what goes into it and writes it out folded, with
//! CRLF line ends, ready to be put in front of the message. The core has no
//! clock: the time is an input, formatted by [`format_rfc5322_date`].
//!
//! Every string that comes from outside (the HELO argument, names, ids, the
//! recipient, TLS parameters) is sanitized first: control characters, and
//! characters that would change the header's structure where they stand, are
//! replaced by `?`, so no input can end the header or start a new one.
//!
//! The layout follows Postfix's:
//!
//! ```text
//! Received: from helo.example (name.example [192.0.2.1])
//!         by mx.example.org (smtp-proto) with ESMTPS id abc
//!         (using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)
//!         for <rcpt@example.org>; Sun, 22 Nov 2026 05:28:00 +0000
//! ```

use std::net::IpAddr;

/// Lines are folded so as not to exceed this many characters where possible (RFC 5322 §2.1.1).
const FOLD_AT: usize = 78;

/// Longest piece of any input string written, in bytes; longer ones are cut.
///
/// Longer than any valid domain (255) or path (256, RFC 5321 §4.5.3.1.3), and
/// short enough that no line can reach the hard limit of 998 characters.
const MAX_VALUE_LEN: usize = 256;

/// Name of the software, shown in a comment after our host name.
const SOFTWARE: &str = "smtp-proto";

/// TLS parameters of the session, shown in a comment as Postfix does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo<'a> {
    /// The protocol version, e.g. `TLSv1.3`.
    pub version: &'a str,
    /// The cipher suite, e.g. `TLS_AES_128_GCM_SHA256`.
    pub cipher: &'a str,
}

/// The `with` protocol keyword of a trace header (RFC 3848, RFC 6531 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WithProtocol {
    /// `SMTP`: HELO, without TLS or AUTH.
    Smtp,
    /// `ESMTP`: EHLO.
    Esmtp,
    /// `ESMTPA`: EHLO, authenticated.
    Esmtpa,
    /// `ESMTPS`: EHLO over TLS.
    Esmtps,
    /// `ESMTPSA`: EHLO over TLS, authenticated.
    Esmtpsa,
    /// `LMTP`.
    Lmtp,
    /// `LMTPA`: LMTP, authenticated.
    Lmtpa,
    /// `LMTPS`: LMTP over TLS.
    Lmtps,
    /// `LMTPSA`: LMTP over TLS, authenticated.
    Lmtpsa,
    /// `UTF8SMTP`: SMTPUTF8 message.
    Utf8Smtp,
    /// `UTF8SMTPA`: SMTPUTF8 message, authenticated.
    Utf8Smtpa,
    /// `UTF8SMTPS`: SMTPUTF8 message over TLS.
    Utf8Smtps,
    /// `UTF8SMTPSA`: SMTPUTF8 message over TLS, authenticated.
    Utf8Smtpsa,
    /// `UTF8LMTP`: SMTPUTF8 message over LMTP.
    Utf8Lmtp,
    /// `UTF8LMTPA`: SMTPUTF8 message over LMTP, authenticated.
    Utf8Lmtpa,
    /// `UTF8LMTPS`: SMTPUTF8 message over LMTP with TLS.
    Utf8Lmtps,
    /// `UTF8LMTPSA`: SMTPUTF8 message over LMTP with TLS, authenticated.
    Utf8Lmtpsa,
}

impl WithProtocol {
    /// Picks the keyword for a session.
    ///
    /// `extended` tells EHLO (or LHLO) from HELO. The `S` and `A` suffixes
    /// say exactly whether TLS and AUTH were used (RFC 3848), after HELO
    /// too: TLS may be implicit and AUTH works after HELO, and RFC 3848
    /// registers only the ESMTP forms, so a HELO session with TLS or AUTH
    /// is `ESMTPS`, `ESMTPA` or `ESMTPSA` (plain HELO stays `SMTP`); `utf8`
    /// (the message was sent with SMTPUTF8) implies EHLO and wins over
    /// `extended`. With `lmtp`, `extended` is ignored.
    pub fn new(lmtp: bool, extended: bool, tls: bool, authenticated: bool, utf8: bool) -> Self {
        use WithProtocol::*;
        match (lmtp, utf8, tls, authenticated) {
            (false, false, false, false) if !extended => Smtp,
            (false, false, false, false) => Esmtp,
            (false, false, false, true) => Esmtpa,
            (false, false, true, false) => Esmtps,
            (false, false, true, true) => Esmtpsa,
            (true, false, false, false) => Lmtp,
            (true, false, false, true) => Lmtpa,
            (true, false, true, false) => Lmtps,
            (true, false, true, true) => Lmtpsa,
            (false, true, false, false) => Utf8Smtp,
            (false, true, false, true) => Utf8Smtpa,
            (false, true, true, false) => Utf8Smtps,
            (false, true, true, true) => Utf8Smtpsa,
            (true, true, false, false) => Utf8Lmtp,
            (true, true, false, true) => Utf8Lmtpa,
            (true, true, true, false) => Utf8Lmtps,
            (true, true, true, true) => Utf8Lmtpsa,
        }
    }

    /// The keyword as written after `with`, e.g. `ESMTPSA`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Smtp => "SMTP",
            Self::Esmtp => "ESMTP",
            Self::Esmtpa => "ESMTPA",
            Self::Esmtps => "ESMTPS",
            Self::Esmtpsa => "ESMTPSA",
            Self::Lmtp => "LMTP",
            Self::Lmtpa => "LMTPA",
            Self::Lmtps => "LMTPS",
            Self::Lmtpsa => "LMTPSA",
            Self::Utf8Smtp => "UTF8SMTP",
            Self::Utf8Smtpa => "UTF8SMTPA",
            Self::Utf8Smtps => "UTF8SMTPS",
            Self::Utf8Smtpsa => "UTF8SMTPSA",
            Self::Utf8Lmtp => "UTF8LMTP",
            Self::Utf8Lmtpa => "UTF8LMTPA",
            Self::Utf8Lmtps => "UTF8LMTPS",
            Self::Utf8Lmtpsa => "UTF8LMTPSA",
        }
    }

    /// Whether the message is an SMTPUTF8 one, whose header may hold UTF-8 (RFC 6532).
    fn is_utf8(self) -> bool {
        matches!(
            self,
            Self::Utf8Smtp
                | Self::Utf8Smtpa
                | Self::Utf8Smtps
                | Self::Utf8Smtpsa
                | Self::Utf8Lmtp
                | Self::Utf8Lmtpa
                | Self::Utf8Lmtps
                | Self::Utf8Lmtpsa
        )
    }
}

/// What goes into a `Received:` header.
#[derive(Debug, Clone)]
pub struct ReceivedHeader<'a> {
    /// The client's HELO/EHLO/LHLO argument.
    pub helo: Option<&'a str>,
    /// The client's address.
    pub peer_ip: Option<IpAddr>,
    /// The client's verified reverse DNS name, if the caller has one; shown
    /// only with `peer_ip` (`unknown` stands in when it is `None`).
    pub peer_name: Option<&'a str>,
    /// Our host name.
    pub by: &'a str,
    /// The `with` keyword.
    pub protocol: WithProtocol,
    /// The queue or session id.
    pub id: Option<&'a str>,
    /// The recipient, given only when there is exactly one (without angle brackets).
    pub for_recipient: Option<&'a str>,
    /// The session's TLS parameters, if it used TLS.
    pub tls: Option<TlsInfo<'a>>,
    /// The time of receipt, in seconds since the Unix epoch (UTC).
    pub timestamp: i64,
    /// The local offset from UTC to print the time in, in minutes (e.g. 60 for `+0100`).
    pub utc_offset_minutes: i16,
}

impl ReceivedHeader<'_> {
    /// Appends the header, folded and ending with CRLF, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let utf8 = self.protocol.is_utf8();
        let mut w = Folder::new(out);

        // from-clause: "from HELO (NAME [IP])"
        let ip_literal = self.peer_ip.map(address_literal);
        if self.helo.is_some() || ip_literal.is_some() {
            // Without HELO, the address literal stands for the domain.
            let domain = match self.helo {
                Some(helo) => sanitize(helo, Context::Word, utf8),
                None => ip_literal.clone().unwrap_or_default(),
            };
            w.word(&format!("from {domain}"));
            if let Some(ip) = &ip_literal {
                let name = self.peer_name.map_or_else(
                    || "unknown".to_owned(),
                    |n| sanitize(n, Context::Comment, utf8),
                );
                w.word(&format!("({name}"));
                w.word(&format!("{ip})"));
            }
        }

        // by-clause, with and id.
        w.break_line();
        w.word(&format!("by {}", sanitize(self.by, Context::Word, utf8)));
        w.word(&format!("({SOFTWARE})"));
        w.word(&format!("with {}", self.protocol.as_str()));
        if let Some(id) = self.id {
            w.word(&format!("id {}", sanitize(id, Context::Word, utf8)));
        }

        if let Some(tls) = &self.tls {
            w.break_line();
            w.word(&format!(
                "(using {}",
                sanitize(tls.version, Context::Comment, utf8)
            ));
            w.word(&format!(
                "with cipher {})",
                sanitize(tls.cipher, Context::Comment, utf8)
            ));
        }

        let mut date = String::with_capacity(32);
        format_rfc5322_date(self.timestamp, self.utc_offset_minutes, &mut date);
        match self.for_recipient {
            Some(rcpt) => {
                w.break_line();
                w.word(&format!("for <{}>;", sanitize_path(rcpt, utf8)));
                w.word(&date);
            }
            None => {
                w.semicolon();
                w.break_line();
                w.word(&date);
            }
        }
        w.finish();
    }

    /// Returns the header, folded and ending with CRLF.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.write_to(&mut out);
        out
    }
}

/// Formats an address as an address literal: `[192.0.2.1]` or `[IPv6:2001:db8::1]`.
fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    }
}

/// Where a sanitized string goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Context {
    /// A bare word (domain, id): no white space, comment, quote or `;`.
    Word,
    /// Inside a comment: no white space, parenthesis or backslash.
    Comment,
}

/// Replaces everything unsafe for `context` by `?`, and cuts the result to [`MAX_VALUE_LEN`].
///
/// Control characters (CR and LF among them) and, unless `utf8`, non-ASCII
/// characters are always replaced; an empty string becomes `?`.
fn sanitize(input: &str, context: Context, utf8: bool) -> String {
    let out = sanitize_with(input, utf8, |c| match context {
        Context::Word => c.is_whitespace() || matches!(c, '(' | ')' | ';' | '"' | '\\' | '<' | '>'),
        Context::Comment => c.is_whitespace() || matches!(c, '(' | ')' | '\\'),
    });
    if out.is_empty() { "?".to_owned() } else { out }
}

/// Sanitizes the `for` path: like [`sanitize`], but spaces (possible in a
/// quoted local part) are kept while angle brackets and parentheses are not.
/// One pair of surrounding angle brackets is removed first.
fn sanitize_path(input: &str, utf8: bool) -> String {
    let inner = input
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(input);
    sanitize_with(inner, utf8, |c| {
        (c.is_whitespace() && c != ' ') || matches!(c, '(' | ')' | '<' | '>')
    })
}

/// Copies `input` replacing control characters, non-ASCII ones unless `utf8`,
/// and those `forbidden` says, by `?`; stops before [`MAX_VALUE_LEN`] bytes.
fn sanitize_with(input: &str, utf8: bool, forbidden: impl Fn(char) -> bool) -> String {
    let mut out = String::with_capacity(input.len().min(MAX_VALUE_LEN));
    for c in input.chars() {
        let c = if c.is_control() || (!utf8 && !c.is_ascii()) || forbidden(c) {
            '?'
        } else {
            c
        };
        if out.len() + c.len_utf8() > MAX_VALUE_LEN {
            break;
        }
        out.push(c);
    }
    out
}

/// Writes words separated by spaces, folding lines before [`FOLD_AT`] characters.
struct Folder<'o> {
    out: &'o mut Vec<u8>,
    /// Characters on the current line so far.
    column: usize,
    /// Whether the current line holds only its lead (`Received:` or the TAB).
    fresh: bool,
    /// Whether the next word must start a new line.
    pending_break: bool,
}

impl<'o> Folder<'o> {
    /// Starts the header in `out`.
    fn new(out: &'o mut Vec<u8>) -> Self {
        out.extend_from_slice(b"Received:");
        Folder {
            out,
            column: "Received:".len(),
            fresh: true,
            pending_break: false,
        }
    }

    /// Makes the next word start a continuation line (unless the line is still empty).
    fn break_line(&mut self) {
        if !self.fresh {
            self.pending_break = true;
        }
    }

    /// Appends `;` to the last word written.
    fn semicolon(&mut self) {
        self.out.push(b';');
        self.column += 1;
    }

    /// Writes one word, which is never split; `word` holds no CR, LF or TAB.
    fn word(&mut self, word: &str) {
        let width = word.chars().count();
        if self.pending_break || (!self.fresh && self.column + 1 + width > FOLD_AT) {
            self.out.extend_from_slice(b"\r\n\t");
            self.column = 1;
        } else {
            self.out.push(b' ');
            self.column += 1;
        }
        self.out.extend_from_slice(word.as_bytes());
        self.column += width;
        self.fresh = false;
        self.pending_break = false;
    }

    /// Ends the header.
    fn finish(self) {
        self.out.extend_from_slice(b"\r\n");
    }
}

/// Earliest time printed: 0000-01-01T00:00:00 (local), in seconds from the epoch.
const MIN_TIME: i64 = -62_167_219_200;
/// Latest time printed: 9999-12-31T23:59:59 (local), in seconds from the epoch.
const MAX_TIME: i64 = 253_402_300_799;
/// Largest offset printed, in minutes: `+9959` / `-9959`.
const MAX_OFFSET: i16 = 99 * 60 + 59;

/// Appends an RFC 5322 date-time such as `Sun, 22 Nov 2026 05:28:00 +0000` to `out`.
///
/// `timestamp` is in seconds since the Unix epoch (UTC); the time is printed
/// in the zone `utc_offset_minutes` east of UTC. Out-of-range values are
/// clamped so the output always has the RFC 5322 shape: the offset to
/// ±99:59 and the local time to the years 0000-9999.
pub fn format_rfc5322_date(timestamp: i64, utc_offset_minutes: i16, out: &mut String) {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let offset = utc_offset_minutes.clamp(-MAX_OFFSET, MAX_OFFSET);
    let local = timestamp
        .saturating_add(i64::from(offset) * 60)
        .clamp(MIN_TIME, MAX_TIME);
    let days = local.div_euclid(86_400);
    let secs = local.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = (days + 4).rem_euclid(7);

    let name = |names: &[&'static str], index: i64| {
        usize::try_from(index)
            .ok()
            .and_then(|i| names.get(i).copied())
            .unwrap_or("???")
    };
    out.push_str(name(&DAYS, weekday));
    out.push_str(", ");
    push_digits(out, day, 2);
    out.push(' ');
    out.push_str(name(&MONTHS, month - 1));
    out.push(' ');
    push_digits(out, year, 4);
    out.push(' ');
    push_digits(out, secs / 3600, 2);
    out.push(':');
    push_digits(out, secs / 60 % 60, 2);
    out.push(':');
    push_digits(out, secs % 60, 2);
    out.push(' ');
    out.push(if offset < 0 { '-' } else { '+' });
    let offset = i64::from(offset.unsigned_abs());
    push_digits(out, offset / 60, 2);
    push_digits(out, offset % 60, 2);
}

/// Appends the non-negative `value` in decimal, zero-padded to `width` digits.
fn push_digits(out: &mut String, value: i64, width: usize) {
    let digits = value.max(0).to_string();
    for _ in digits.len()..width {
        out.push('0');
    }
    out.push_str(&digits);
}

/// Converts days since 1970-01-01 to a proleptic Gregorian (year, month 1-12, day 1-31).
///
/// Howard Hinnant's `civil_from_days` algorithm; `days` must be within a few
/// million years of the epoch (callers clamp it).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = if m <= 2 { y + 1 } else { y };
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use proptest::prelude::*;

    fn date(ts: i64, off: i16) -> String {
        let mut s = String::new();
        format_rfc5322_date(ts, off, &mut s);
        s
    }

    fn base() -> ReceivedHeader<'static> {
        ReceivedHeader {
            helo: Some("helo.example"),
            peer_ip: Some("192.0.2.1".parse().unwrap()),
            peer_name: Some("name"),
            by: "mx.example.org",
            protocol: WithProtocol::Esmtps,
            id: Some("abc"),
            for_recipient: Some("rcpt@example.org"),
            tls: Some(TlsInfo {
                version: "TLSv1.3",
                cipher: "X",
            }),
            timestamp: 1_795_325_280, // 2026-11-22 05:28:00 UTC
            utc_offset_minutes: 0,
        }
    }

    fn text(h: &ReceivedHeader<'_>) -> String {
        String::from_utf8(h.to_vec()).unwrap()
    }

    /// The structural invariants every header must satisfy.
    fn check_shape(bytes: &[u8]) -> Result<(), String> {
        let s = std::str::from_utf8(bytes).map_err(|e| e.to_string())?;
        if !s.starts_with("Received: ") {
            return Err(format!("bad start: {s:?}"));
        }
        if !s.ends_with("\r\n") {
            return Err(format!("no final CRLF: {s:?}"));
        }
        let body = &s[..s.len() - 2];
        for (i, line) in body.split("\r\n").enumerate() {
            if line.contains('\r') || line.contains('\n') {
                return Err(format!("bare CR or LF in line {i}: {line:?}"));
            }
            if i > 0 && !line.starts_with('\t') {
                return Err(format!("continuation line {i} lacks a TAB: {line:?}"));
            }
            if i > 0 && line.trim().is_empty() {
                return Err(format!("empty continuation line {i}: {s:?}"));
            }
            if line.chars().count() > 998 {
                return Err(format!("line {i} too long"));
            }
        }
        if !body.contains("; ") && !body.contains(";\r\n\t") {
            return Err(format!("no date separator: {s:?}"));
        }
        Ok(())
    }

    #[test]
    fn dates() {
        assert_eq!(date(0, 0), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(date(1_795_325_280, 0), "Sun, 22 Nov 2026 05:28:00 +0000");
        assert_eq!(date(951_782_400, 0), "Tue, 29 Feb 2000 00:00:00 +0000"); // leap (400)
        assert_eq!(date(951_868_800, 0), "Wed, 01 Mar 2000 00:00:00 +0000");
        assert_eq!(date(1_709_164_800, 0), "Thu, 29 Feb 2024 00:00:00 +0000");
        assert_eq!(date(4_107_542_400, 0), "Mon, 01 Mar 2100 00:00:00 +0000"); // 2100 not leap
        assert_eq!(date(4_107_542_399, 0), "Sun, 28 Feb 2100 23:59:59 +0000");
        assert_eq!(date(1_735_689_599, 0), "Tue, 31 Dec 2024 23:59:59 +0000");
        assert_eq!(date(1_234_567_890, 0), "Fri, 13 Feb 2009 23:31:30 +0000");
        assert_eq!(date(2_147_483_647, 0), "Tue, 19 Jan 2038 03:14:07 +0000");
        assert_eq!(date(-1, 0), "Wed, 31 Dec 1969 23:59:59 +0000");
        assert_eq!(date(-86_400 * 365, 0), "Wed, 01 Jan 1969 00:00:00 +0000");
    }

    #[test]
    fn offsets() {
        assert_eq!(date(0, 60), "Thu, 01 Jan 1970 01:00:00 +0100");
        assert_eq!(date(0, -210), "Wed, 31 Dec 1969 20:30:00 -0330");
        assert_eq!(date(0, 330), "Thu, 01 Jan 1970 05:30:00 +0530");
        assert_eq!(date(0, 765), "Thu, 01 Jan 1970 12:45:00 +1245");
        assert_eq!(date(1_795_325_280, -600), "Sat, 21 Nov 2026 19:28:00 -1000");
        assert_eq!(date(0, -45), "Wed, 31 Dec 1969 23:15:00 -0045");
    }

    #[test]
    fn extremes_are_clamped() {
        assert_eq!(date(i64::MAX, i16::MAX), "Fri, 31 Dec 9999 23:59:59 +9959");
        assert_eq!(date(i64::MIN, i16::MIN), "Sat, 01 Jan 0000 00:00:00 -9959");
    }

    #[test]
    fn brief_example() {
        assert_eq!(
            text(&base()),
            "Received: from helo.example (name [192.0.2.1])\r\n\
             \tby mx.example.org (smtp-proto) with ESMTPS id abc\r\n\
             \t(using TLSv1.3 with cipher X)\r\n\
             \tfor <rcpt@example.org>; Sun, 22 Nov 2026 05:28:00 +0000\r\n"
        );
    }

    #[test]
    fn unknown_name_ipv6_no_tls_no_for() {
        let h = ReceivedHeader {
            peer_ip: Some("2001:db8::1".parse().unwrap()),
            peer_name: None,
            tls: None,
            for_recipient: None,
            protocol: WithProtocol::Esmtp,
            ..base()
        };
        assert_eq!(
            text(&h),
            "Received: from helo.example (unknown [IPv6:2001:db8::1])\r\n\
             \tby mx.example.org (smtp-proto) with ESMTP id abc;\r\n\
             \tSun, 22 Nov 2026 05:28:00 +0000\r\n"
        );
    }

    #[test]
    fn no_for_with_tls() {
        let h = ReceivedHeader {
            for_recipient: None,
            id: None,
            ..base()
        };
        assert_eq!(
            text(&h),
            "Received: from helo.example (name [192.0.2.1])\r\n\
             \tby mx.example.org (smtp-proto) with ESMTPS\r\n\
             \t(using TLSv1.3 with cipher X);\r\n\
             \tSun, 22 Nov 2026 05:28:00 +0000\r\n"
        );
    }

    #[test]
    fn from_clause_variants() {
        // No HELO and no address: no from clause at all.
        let h = ReceivedHeader {
            helo: None,
            peer_ip: None,
            tls: None,
            ..base()
        };
        assert_eq!(
            text(&h),
            "Received: by mx.example.org (smtp-proto) with ESMTPS id abc\r\n\
             \tfor <rcpt@example.org>; Sun, 22 Nov 2026 05:28:00 +0000\r\n"
        );
        // No HELO: the address literal stands for the domain.
        let h = ReceivedHeader {
            helo: None,
            peer_name: None,
            ..base()
        };
        assert!(text(&h).starts_with("Received: from [192.0.2.1] (unknown [192.0.2.1])\r\n"));
        // HELO but no address: no comment.
        let h = ReceivedHeader {
            peer_ip: None,
            ..base()
        };
        assert!(text(&h).starts_with("Received: from helo.example\r\n\tby "));
        // An address literal as HELO keeps its brackets.
        let h = ReceivedHeader {
            helo: Some("[192.0.2.1]"),
            ..base()
        };
        assert!(text(&h).starts_with("Received: from [192.0.2.1] (name [192.0.2.1])\r\n"));
    }

    #[test]
    fn recipient_brackets_are_not_doubled() {
        let h = ReceivedHeader {
            for_recipient: Some("<rcpt@example.org>"),
            ..base()
        };
        assert!(text(&h).contains("\tfor <rcpt@example.org>; "));
        let h = ReceivedHeader {
            for_recipient: Some("\"john doe\"@example.org"),
            ..base()
        };
        assert!(text(&h).contains("\tfor <\"john doe\"@example.org>; "));
    }

    #[test]
    fn header_injection_is_impossible() {
        let evil = "x\r\nBcc: evil@example.com";
        let h = ReceivedHeader {
            helo: Some(evil),
            peer_name: Some("a)\r\nX-Evil: 1 (b"),
            by: "mx\n.example",
            id: Some("id\r\nX: y"),
            for_recipient: Some("a@b>\r\nBcc: c@d"),
            tls: Some(TlsInfo {
                version: "TLSv1.3)\r\n\tX",
                cipher: "C\rD\\",
            }),
            ..base()
        };
        let out = text(&h);
        check_shape(out.as_bytes()).unwrap();
        assert!(!out.contains("\r\nBcc"), "{out}");
        assert!(!out.contains("\r\nX"), "{out}");
        assert!(out.contains("from x??Bcc:?evil@example.com"), "{out}");
        assert!(out.contains("(a???X-Evil:?1??b"), "{out}");
        assert!(out.contains("by mx?.example "), "{out}");
        assert!(out.contains("id id??X:?y"), "{out}");
        assert!(out.contains("for <a@b???Bcc: c@d>;"), "{out}");
        assert!(out.contains("(using TLSv1.3????X"), "{out}");
        assert!(out.contains("with cipher C?D?)"), "{out}");
        // Every non-folding CR or LF was replaced.
        assert_eq!(out.matches('\r').count(), out.matches("\r\n").count());
        assert_eq!(out.matches('\n').count(), out.matches("\r\n").count());
    }

    #[test]
    fn non_ascii_only_in_utf8_sessions() {
        let h = ReceivedHeader {
            helo: Some("bücher.example"),
            for_recipient: Some("jösé@bücher.example"),
            ..base()
        };
        let out = text(&h);
        assert!(out.is_ascii(), "{out}");
        assert!(out.contains("from b?cher.example "), "{out}");
        assert!(out.contains("for <j?s?@b?cher.example>"), "{out}");
        let h = ReceivedHeader {
            protocol: WithProtocol::Utf8Smtps,
            ..h
        };
        let out = text(&h);
        assert!(out.contains("from bücher.example "), "{out}");
        assert!(out.contains("with UTF8SMTPS "), "{out}");
        assert!(out.contains("for <jösé@bücher.example>"), "{out}");
    }

    #[test]
    fn long_values_fold_and_are_cut() {
        // "Received: from " + 60 characters still fits in 78 columns.
        let long = "a".repeat(60);
        let h = ReceivedHeader {
            helo: Some(&long),
            peer_name: Some(&long),
            by: &long,
            id: Some(&long),
            ..base()
        };
        let out = text(&h);
        check_shape(out.as_bytes()).unwrap();
        for line in out.split("\r\n") {
            assert!(line.chars().count() <= FOLD_AT, "{line:?} in {out}");
        }
        let huge = "b".repeat(10_000);
        let h = ReceivedHeader {
            helo: Some(&huge),
            for_recipient: Some(&huge),
            ..base()
        };
        let out = text(&h);
        check_shape(out.as_bytes()).unwrap();
        assert!(out.len() < 1000, "{}", out.len());
    }

    #[test]
    fn with_protocol_names() {
        use WithProtocol as W;
        let cases = [
            ((false, false, false, false, false), W::Smtp, "SMTP"),
            ((false, false, false, true, false), W::Esmtpa, "ESMTPA"),
            ((false, false, true, false, false), W::Esmtps, "ESMTPS"),
            ((false, false, true, true, false), W::Esmtpsa, "ESMTPSA"),
            ((false, true, false, false, false), W::Esmtp, "ESMTP"),
            ((false, true, false, true, false), W::Esmtpa, "ESMTPA"),
            ((false, true, true, false, false), W::Esmtps, "ESMTPS"),
            ((false, true, true, true, false), W::Esmtpsa, "ESMTPSA"),
            ((true, true, false, false, false), W::Lmtp, "LMTP"),
            ((true, false, false, false, false), W::Lmtp, "LMTP"),
            ((true, true, false, true, false), W::Lmtpa, "LMTPA"),
            ((true, true, true, false, false), W::Lmtps, "LMTPS"),
            ((true, true, true, true, false), W::Lmtpsa, "LMTPSA"),
            ((false, true, false, false, true), W::Utf8Smtp, "UTF8SMTP"),
            ((false, false, false, false, true), W::Utf8Smtp, "UTF8SMTP"),
            ((false, true, false, true, true), W::Utf8Smtpa, "UTF8SMTPA"),
            ((false, true, true, false, true), W::Utf8Smtps, "UTF8SMTPS"),
            ((false, true, true, true, true), W::Utf8Smtpsa, "UTF8SMTPSA"),
            ((true, true, false, false, true), W::Utf8Lmtp, "UTF8LMTP"),
            ((true, true, false, true, true), W::Utf8Lmtpa, "UTF8LMTPA"),
            ((true, true, true, false, true), W::Utf8Lmtps, "UTF8LMTPS"),
            ((true, true, true, true, true), W::Utf8Lmtpsa, "UTF8LMTPSA"),
        ];
        for ((lmtp, ext, tls, auth, utf8), want, name) in cases {
            let got = W::new(lmtp, ext, tls, auth, utf8);
            assert_eq!(got, want, "{lmtp} {ext} {tls} {auth} {utf8}");
            assert_eq!(got.as_str(), name);
        }
    }

    #[test]
    fn write_to_appends() {
        let mut out = b"X-Existing: 1\r\n".to_vec();
        base().write_to(&mut out);
        assert!(out.starts_with(b"X-Existing: 1\r\nReceived: from "));
        assert_eq!(&out[15..], &base().to_vec()[..]);
    }

    fn opt_text() -> impl Strategy<Value = Option<String>> {
        proptest::option::of(any::<String>())
    }

    proptest! {
        #[test]
        fn every_line_is_well_formed(
            helo in opt_text(),
            ip in proptest::option::of(any::<IpAddr>()),
            name in opt_text(),
            by in any::<String>(),
            flags in any::<(bool, bool, bool, bool, bool)>(),
            id in opt_text(),
            rcpt in opt_text(),
            tls in proptest::option::of((any::<String>(), any::<String>())),
            timestamp in any::<i64>(),
            offset in any::<i16>(),
        ) {
            let (lmtp, ext, t, auth, utf8) = flags;
            let h = ReceivedHeader {
                helo: helo.as_deref(),
                peer_ip: ip,
                peer_name: name.as_deref(),
                by: &by,
                protocol: WithProtocol::new(lmtp, ext, t, auth, utf8),
                id: id.as_deref(),
                for_recipient: rcpt.as_deref(),
                tls: tls.as_ref().map(|(v, c)| TlsInfo { version: v, cipher: c }),
                timestamp,
                utc_offset_minutes: offset,
            };
            let out = h.to_vec();
            if let Err(e) = check_shape(&out) {
                prop_assert!(false, "{}", e);
            }
            if !h.protocol.is_utf8() {
                prop_assert!(out.is_ascii());
            }
        }

        #[test]
        fn short_values_fit_in_78_columns(
            helo in "[a-z0-9.-]{1,30}",
            name in "[a-z0-9.-]{1,30}",
            ip in any::<IpAddr>(),
            by in "[a-z0-9.-]{1,30}",
            id in "[A-Za-z0-9]{1,20}",
            rcpt in "[a-z0-9.]{1,20}@[a-z0-9.]{1,20}",
            timestamp in MIN_TIME..MAX_TIME,
        ) {
            let h = ReceivedHeader {
                helo: Some(&helo),
                peer_ip: Some(ip),
                peer_name: Some(&name),
                by: &by,
                protocol: WithProtocol::Esmtpsa,
                id: Some(&id),
                for_recipient: Some(&rcpt),
                tls: Some(TlsInfo { version: "TLSv1.3", cipher: "TLS_CHACHA20_POLY1305_SHA256" }),
                timestamp,
                utc_offset_minutes: 0,
            };
            let out = String::from_utf8(h.to_vec()).unwrap();
            for line in out.split("\r\n") {
                prop_assert!(line.chars().count() <= FOLD_AT, "{:?}", out);
            }
        }

        #[test]
        fn date_shape(timestamp in any::<i64>(), offset in any::<i16>()) {
            let s = date(timestamp, offset);
            prop_assert_eq!(s.len(), 31, "{}", s);
            prop_assert!(s.is_ascii());
        }

        #[test]
        fn date_roundtrips_through_days(days in -719_528i64..2_932_896) {
            // days_from_civil(civil_from_days(d)) == d
            let (y, m, d) = civil_from_days(days);
            let y2 = if m <= 2 { y - 1 } else { y };
            let era = y2.div_euclid(400);
            let yoe = y2 - era * 400;
            let mp = if m > 2 { m - 3 } else { m + 9 };
            let doy = (153 * mp + 2) / 5 + d - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            prop_assert_eq!(era * 146_097 + doe - 719_468, days);
        }
    }
}
