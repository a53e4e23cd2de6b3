//! The SMTP/LMTP command-line grammar: turns one command line into a
//! [`Command`].
//!
//! [`parse_command`] takes the octets of one line (without its CRLF) and
//! returns a [`Command`] whose strings all borrow from that line; it never
//! allocates and never panics, whatever the input.
//!
//! # Verbs
//!
//! Verbs are matched case-insensitively and must be followed by a space or
//! the end of the line (`MAILX` is unknown). Trailing spaces and tabs are
//! ignored on every line. The line must be UTF-8 (after a known verb,
//! invalid UTF-8 is [`ParseError::Syntax`]).
//!
//! | verb | arguments |
//! | --- | --- |
//! | `HELO` / `EHLO` / `LHLO` | one token of printable ASCII: a domain, an address literal, or (tolerated, as real servers do) any bare host name |
//! | `MAIL` | `FROM:<reverse-path>` then ESMTP parameters |
//! | `RCPT` | `TO:<forward-path>` then ESMTP parameters |
//! | `DATA`, `RSET`, `QUIT`, `STARTTLS` | none |
//! | `NOOP` | anything, ignored |
//! | `HELP` | an optional topic |
//! | `VRFY`, `EXPN` | a required string |
//! | `BDAT` | `size [LAST]` (RFC 3030), size of 1 to 20 digits fitting `u64` |
//! | `AUTH` | `mechanism [initial-response]` (RFC 4954) |
//!
//! # Paths (RFC 5321 §4.1.2, RFC 6531)
//!
//! * `Path = "<" [ A-d-l ":" ] Mailbox ">"`; a source route (`A-d-l`) is
//!   accepted and dropped: [`Mailbox::raw`] starts after it. Route hops may
//!   be domains or address literals.
//! * `Mailbox = Local-part "@" ( Domain / address-literal )`.
//! * `Local-part = Dot-string / Quoted-string`, with RFC 5322 `atext`,
//!   `qtextSMTP` and `quoted-pairSMTP`.
//! * `Domain = sub-domain *("." sub-domain)`, `sub-domain = Let-dig [Ldh-str]`.
//! * Address literals: `[` dotted quad (each part 0-255) `]`,
//!   `[IPv6:` an address that [`core::net::Ipv6Addr`] accepts (including the
//!   IPv4-mapped forms) `]`, and `[tag:dcontent]` general literals.
//! * `<>` is the null reverse path (MAIL only); `<Postmaster>` without a
//!   domain, in any case, is [`ForwardPath::Postmaster`] (RCPT only).
//! * Limits of RFC 5321 §4.5.3.1: local part ≤ 64 octets, domain ≤ 255
//!   octets, each label ≤ 63 octets, whole path (brackets and route
//!   included) ≤ 256 octets. Lengths are counted in octets, also for
//!   non-ASCII labels.
//! * RFC 6531: `atext`, `qtextSMTP` and domain labels also take any
//!   non-ASCII character. Such an address is only allowed in MAIL when the
//!   same line carries `SMTPUTF8`, and in RCPT when
//!   [`ParseOptions::utf8_addresses`] is set; otherwise the command fails
//!   with [`ParseError::Utf8NotPermitted`] (a path that is invalid even with
//!   RFC 6531 is a bad sender or recipient instead).
//! * [`ParseOptions::lenient`] also accepts a local part with leading,
//!   trailing or doubled dots, spaces after the colon (and after the verb),
//!   and a path without its angle brackets (`MAIL FROM:user@example.com`).
//!
//! # ESMTP parameters
//!
//! Parameters are `keyword[=value]`, separated by one or more spaces; the
//! keyword is case-insensitive. An unknown keyword, or one given twice, is
//! [`ParseError::UnknownParameter`]; a known keyword with a missing or bad
//! value (or a value where none is allowed) is
//! [`ParseError::BadParameterValue`]; a token that is not even
//! `keyword[=value]` is [`ParseError::Syntax`].
//!
//! * MAIL: `SIZE=` 1 to 20 digits (RFC 1870; past `u64::MAX` reads as `u64::MAX`), `BODY=7BIT|8BITMIME|BINARYMIME`
//!   (RFC 6152, RFC 3030), `SMTPUTF8` (RFC 6531), `RET=FULL|HDRS` and
//!   `ENVID=` xtext of at most 100 characters (RFC 3461), `AUTH=` xtext or
//!   `<>` (RFC 4954), `REQUIRETLS` (RFC 8689).
//! * RCPT: `NOTIFY=NEVER` or a comma list of `SUCCESS`, `FAILURE`, `DELAY`,
//!   and `ORCPT=addr-type;xtext` of at most 500 characters (RFC 3461); when
//!   [`ParseOptions::utf8_addresses`] is set, an `ORCPT=utf-8;` address may
//!   also carry raw non-ASCII characters (RFC 6533).
//!
//! xtext values are checked, not decoded: see [`decode_xtext`].
//!
//! # Which error wins
//!
//! For MAIL and RCPT the checks run in this order, and the first failure is
//! the result: the `FROM:` / `TO:` keyword ([`ParseError::Syntax`]), the
//! path, which must be followed by a space or the end of the line
//! ([`ParseError::BadSender`] / [`ParseError::BadRecipient`]; so
//! `<a@b>SIZE=1` is a bad path), the parameters from left to right, and
//! last whether a non-ASCII path is permitted
//! ([`ParseError::Utf8NotPermitted`]).
//!
//! # Notes
//!
//! * A general address literal only needs an `Ldh-str` tag, so a bare IPv6
//!   literal such as `[2001:db8::1]` is well-formed (tag `2001`); only the
//!   `IPv6:` tag gets its address checked.
//! * The everyday `<dot-atom@domain.name>` in ASCII goes through a
//!   hand-written scanner that answers exactly as the nom grammar would
//!   (a unit test checks this); everything else goes through nom. Neither
//!   looks further than 257 octets into a path, so work stays linear.

use crate::command::*;
use core::net::Ipv6Addr;
use memchr::memchr;
use nom::{
    IResult, Parser,
    branch::alt,
    bytes::complete::{tag_no_case, take_while, take_while_m_n, take_while1},
    character::complete::char,
    combinator::{all_consuming, opt, recognize, verify},
    multi::many0_count,
    sequence::{preceded, terminated},
};

// ---------------------------------------------------------------------------
// Character classes
// ---------------------------------------------------------------------------

/// RFC 5322 `atext`, plus any non-ASCII octet (RFC 6531).
const ATEXT: u8 = 1;
/// Letters, digits and `-`, plus any non-ASCII octet (domain labels).
const LDH: u8 = 1 << 1;
/// Letters, digits and `-` only.
const LDH_ASCII: u8 = 1 << 2;
/// `qtextSMTP`, plus any non-ASCII octet (RFC 6531).
const QTEXT: u8 = 1 << 3;
/// `dcontent` of a general address literal.
const DCONTENT: u8 = 1 << 4;
/// `xchar` of RFC 3461 xtext: `!` to `~` except `+` and `=`.
const XCHAR: u8 = 1 << 5;
/// The base64 alphabet and its `=` padding.
const B64: u8 = 1 << 6;
/// SASL mechanism name characters (RFC 4422), either case.
const MECH: u8 = 1 << 7;

const fn build_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0usize;
    while i < 256 {
        let b = i as u8;
        let mut f = 0u8;
        if b.is_ascii_alphanumeric() {
            f |= ATEXT | LDH | LDH_ASCII | B64 | MECH;
        }
        if b >= 0x80 {
            f |= ATEXT | LDH | QTEXT;
        }
        if matches!(
            b,
            b'!' | b'#'
                | b'$'
                | b'%'
                | b'&'
                | b'\''
                | b'*'
                | b'+'
                | b'-'
                | b'/'
                | b'='
                | b'?'
                | b'^'
                | b'_'
                | b'`'
                | b'{'
                | b'|'
                | b'}'
                | b'~'
        ) {
            f |= ATEXT;
        }
        if b == b'-' {
            f |= LDH | LDH_ASCII | MECH;
        }
        if b == b'_' {
            f |= MECH;
        }
        if b == b'+' || b == b'/' || b == b'=' {
            f |= B64;
        }
        if b == 32 || b == 33 || (b >= 35 && b <= 91) || (b >= 93 && b <= 126) {
            f |= QTEXT;
        }
        if (b >= 33 && b <= 90) || (b >= 94 && b <= 126) {
            f |= DCONTENT;
        }
        if b >= 33 && b <= 126 && b != b'+' && b != b'=' {
            f |= XCHAR;
        }
        t[i] = f;
        i += 1;
    }
    t
}

static CLASSES: [u8; 256] = build_classes();

#[inline(always)]
fn is(b: u8, class: u8) -> bool {
    // A u8 index into a 256-entry table is always in bounds.
    CLASSES[usize::from(b)] & class != 0
}

// ---------------------------------------------------------------------------
// Mailbox grammar (RFC 5321 §4.1.2, RFC 6531 §3.3)
// ---------------------------------------------------------------------------

/// nom result over octets; errors carry no data (the caller maps them).
type Res<'a, O> = IResult<&'a [u8], O, ()>;

const MAX_LOCAL: usize = 64;
const MAX_DOMAIN: usize = 255;
const MAX_LABEL: usize = 63;
const MAX_PATH: usize = 256;

fn fail<T>() -> Result<T, nom::Err<()>> {
    Err(nom::Err::Error(()))
}

/// `Atom = 1*atext`.
fn atom(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(|b| is(b, ATEXT)).parse(i)
}

/// `Dot-string = Atom *("." Atom)`.
fn dot_string(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((atom, many0_count(preceded(char('.'), atom)))).parse(i)
}

/// Lenient dot-string: atext and dots in any order, with at least one atext.
fn loose_dot_string(i: &[u8]) -> Res<'_, &[u8]> {
    verify(take_while1(|b| b == b'.' || is(b, ATEXT)), |s: &[u8]| {
        s.iter().any(|&b| b != b'.')
    })
    .parse(i)
}

/// `Quoted-string = DQUOTE *QcontentSMTP DQUOTE`.
fn quoted_string(i: &[u8]) -> Res<'_, &[u8]> {
    let quoted_pair = recognize((
        char('\\'),
        take_while_m_n(1, 1, |b: u8| (32..=126).contains(&b)),
    ));
    recognize((
        char('"'),
        many0_count(alt((take_while1(|b| is(b, QTEXT)), quoted_pair))),
        char('"'),
    ))
    .parse(i)
}

/// `Local-part = Dot-string / Quoted-string`.
fn local_part(i: &[u8], lenient: bool) -> Res<'_, &[u8]> {
    match i.first() {
        Some(b'"') => quoted_string(i),
        _ if lenient => loose_dot_string(i),
        _ => dot_string(i),
    }
}

/// `sub-domain = Let-dig [Ldh-str]`, at most 63 octets.
fn sub_domain(i: &[u8]) -> Res<'_, &[u8]> {
    verify(take_while1(|b| is(b, LDH)), |l: &[u8]| {
        l.len() <= MAX_LABEL && l.first() != Some(&b'-') && l.last() != Some(&b'-')
    })
    .parse(i)
}

/// `Domain = sub-domain *("." sub-domain)`.
fn domain_name(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((sub_domain, many0_count(preceded(char('.'), sub_domain)))).parse(i)
}

/// `Snum = 1*3DIGIT` with a value of 0 to 255.
fn snum(i: &[u8]) -> Res<'_, &[u8]> {
    verify(
        take_while_m_n(1, 3, |b: u8| b.is_ascii_digit()),
        |d: &[u8]| {
            d.iter()
                .fold(0u32, |n, &c| n * 10 + u32::from(c.wrapping_sub(b'0')))
                <= 255
        },
    )
    .parse(i)
}

/// `IPv4-address-literal = Snum 3("." Snum)`.
fn ipv4_literal(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((snum, char('.'), snum, char('.'), snum, char('.'), snum)).parse(i)
}

/// `IPv6-address-literal = "IPv6:" IPv6-addr`, checked by [`Ipv6Addr`].
fn ipv6_literal(i: &[u8]) -> Res<'_, &[u8]> {
    preceded(
        tag_no_case("IPv6:"),
        verify(
            take_while1(|b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.'),
            |a: &[u8]| {
                core::str::from_utf8(a)
                    .ok()
                    .is_some_and(|s| s.parse::<Ipv6Addr>().is_ok())
            },
        ),
    )
    .parse(i)
}

/// `General-address-literal = Standardized-tag ":" 1*dcontent`, where the
/// tag is an `Ldh-str` other than `IPv6`.
fn general_literal(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((
        verify(take_while1(|b| is(b, LDH_ASCII)), |t: &[u8]| {
            t.last() != Some(&b'-') && !t.eq_ignore_ascii_case(b"IPv6")
        }),
        char(':'),
        take_while1(|b| is(b, DCONTENT)),
    ))
    .parse(i)
}

/// `address-literal = "[" ( IPv4 / IPv6 / General ) "]"`.
fn address_literal(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((
        char('['),
        alt((
            terminated(ipv6_literal, char(']')),
            terminated(ipv4_literal, char(']')),
            terminated(general_literal, char(']')),
        )),
    ))
    .parse(i)
}

/// A domain name or an address literal, at most 255 octets.
fn domain(i: &[u8]) -> Res<'_, &[u8]> {
    let (rest, d) = match i.first() {
        Some(b'[') => address_literal(i)?,
        _ => domain_name(i)?,
    };
    if d.len() > MAX_DOMAIN {
        return fail();
    }
    Ok((rest, d))
}

/// Where a mailbox lies: octet offsets into the text it was parsed from.
#[derive(Debug, Clone, Copy)]
struct Span {
    /// Offset of the first octet of the local part.
    start: usize,
    /// Length of the local part.
    local: usize,
    /// Length of the domain.
    domain: usize,
}

impl Span {
    fn shifted(self, by: usize) -> Span {
        Span {
            start: self.start.saturating_add(by),
            ..self
        }
    }

    /// Builds the borrowed [`Mailbox`] out of the text the span indexes.
    fn mailbox(self, text: &str) -> Option<Mailbox<'_>> {
        let at = self.start.checked_add(self.local)?;
        let end = at.checked_add(1)?.checked_add(self.domain)?;
        Some(Mailbox {
            raw: text.get(self.start..end)?,
            local_part: text.get(self.start..at)?,
            domain: text.get(at.checked_add(1)?..end)?,
        })
    }
}

/// `Mailbox = Local-part "@" ( Domain / address-literal )`; the span is
/// relative to `i`.
fn mailbox(i: &[u8], lenient: bool) -> Res<'_, Span> {
    let (rest, local) = local_part(i, lenient)?;
    if local.len() > MAX_LOCAL {
        return fail();
    }
    let (rest, _) = char('@').parse(rest)?;
    let (rest, dom) = domain(rest)?;
    Ok((
        rest,
        Span {
            start: 0,
            local: local.len(),
            domain: dom.len(),
        },
    ))
}

/// `At-domain = "@" Domain` (address literals tolerated too).
fn at_domain(i: &[u8]) -> Res<'_, &[u8]> {
    preceded(char('@'), domain).parse(i)
}

/// `A-d-l = At-domain *( "," At-domain )`: the obsolete source route.
fn source_route(i: &[u8]) -> Res<'_, &[u8]> {
    recognize((at_domain, many0_count(preceded(char(','), at_domain)))).parse(i)
}

/// `Path = "<" [ A-d-l ":" ] Mailbox ">"`; the span is relative to `i`.
fn path(i: &[u8], lenient: bool) -> Res<'_, Span> {
    let (rest, _) = char('<').parse(i)?;
    let (rest, _) = opt(terminated(source_route, char(':'))).parse(rest)?;
    let start = i.len().saturating_sub(rest.len());
    let (rest, span) = mailbox(rest, lenient)?;
    let (rest, _) = char('>').parse(rest)?;
    if i.len().saturating_sub(rest.len()) > MAX_PATH {
        return fail();
    }
    Ok((rest, span.shifted(start)))
}

// ---------------------------------------------------------------------------
// Path arguments of MAIL and RCPT
// ---------------------------------------------------------------------------

/// What stood where MAIL or RCPT expects a path.
enum PathArg {
    /// `<>`.
    Null,
    /// `<Postmaster>` without a domain.
    Postmaster,
    /// A mailbox at these offsets of the argument text.
    Mailbox(Span),
}

/// A parsed path argument: what it was, whether it held non-ASCII text,
/// and the offset of what follows it.
struct ParsedPath {
    arg: PathArg,
    utf8: bool,
    end: usize,
}

/// Whether the octets after a path may end it: nothing, or a space.
fn path_ends(rest: &[u8]) -> bool {
    matches!(rest.first(), None | Some(b' '))
}

/// Parses the path at the start of `s` (MAIL if `!rcpt`, RCPT otherwise).
/// `None` means it is not a valid path, or is not followed by a space or
/// the end of the line.
fn path_arg(s: &[u8], lenient: bool, rcpt: bool) -> Option<ParsedPath> {
    const POSTMASTER: &[u8] = b"postmaster";
    let ascii = |arg, end| {
        Some(ParsedPath {
            arg,
            utf8: false,
            end,
        })
    };
    // Whether `s` starts with `word` (any case) followed by the end of the path.
    let word_at = |word: &[u8]| {
        s.get(..word.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(word))
            && s.get(word.len()..).is_some_and(path_ends)
    };
    if !rcpt && word_at(b"<>") {
        return ascii(PathArg::Null, 2);
    }
    if rcpt && word_at(b"<postmaster>") {
        return ascii(PathArg::Postmaster, POSTMASTER.len() + 2);
    }
    if rcpt && lenient && word_at(POSTMASTER) {
        return ascii(PathArg::Postmaster, POSTMASTER.len());
    }
    // A valid path fits in MAX_PATH octets: looking one octet further is
    // enough to find its end, and bounds the work on absurd input.
    let window = s.get(..=MAX_PATH).unwrap_or(s);
    let (span, end) = if let Some(fast) = simple_path(window) {
        fast
    } else if window.first() == Some(&b'<') {
        let (rest, span) = path(window, lenient).ok()?;
        (span, window.len().saturating_sub(rest.len()))
    } else if lenient {
        let (rest, span) = mailbox(window, lenient).ok()?;
        let end = window.len().saturating_sub(rest.len());
        // Counted as if it had its brackets.
        if end.saturating_add(2) > MAX_PATH {
            return None;
        }
        (span, end)
    } else {
        return None;
    };
    if !path_ends(s.get(end..)?) {
        return None;
    }
    Some(ParsedPath {
        arg: PathArg::Mailbox(span),
        utf8: !s.get(..end)?.is_ascii(),
        end,
    })
}

/// Fast path for the everyday `<dot-atom@domain.name>` in ASCII, without
/// source route, quotes or address literal. Returns the mailbox span and
/// the length of the path, exactly as [`path`] would; returns `None`
/// whenever the path is anything else, and [`path`] then decides.
fn simple_path(s: &[u8]) -> Option<(Span, usize)> {
    if s.first() != Some(&b'<') {
        return None;
    }
    let mut i = 1;
    // Local part: atoms separated by single dots.
    let mut after_dot = true;
    loop {
        let b = *s.get(i)?;
        if b == b'@' {
            break;
        } else if b == b'.' {
            if after_dot {
                return None;
            }
            after_dot = true;
        } else if b.is_ascii() && is(b, ATEXT) {
            after_dot = false;
        } else {
            return None;
        }
        i += 1;
    }
    let local = i - 1;
    if after_dot || local > MAX_LOCAL {
        return None;
    }
    // Domain: labels of letters, digits and inner hyphens.
    i += 1;
    let domain_start = i;
    let mut prev = b'.';
    let mut label = 0usize;
    loop {
        let b = *s.get(i)?;
        match b {
            b'.' | b'>' if prev == b'.' || prev == b'-' => return None,
            b'-' if prev == b'.' => return None,
            b'>' => break,
            b'.' => label = 0,
            b'-' => label += 1,
            _ if b.is_ascii_alphanumeric() => label += 1,
            _ => return None,
        }
        if label > MAX_LABEL {
            return None;
        }
        prev = b;
        i += 1;
    }
    let domain = i - domain_start;
    let end = i + 1;
    if domain > MAX_DOMAIN || end > MAX_PATH {
        return None;
    }
    Some((
        Span {
            start: 1,
            local,
            domain,
        },
        end,
    ))
}

/// Strips a case-insensitive ASCII prefix.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// The text after `FROM:` / `TO:`: the path, then its parameters.
fn path_and_params<'a>(
    args: &'a str,
    keyword: &str,
    lenient: bool,
    rcpt: bool,
    bad: ParseError,
) -> Result<(PathArg, bool, &'a str, &'a str), ParseError> {
    let args = if lenient {
        args.trim_start_matches(' ')
    } else {
        args
    };
    let mut text = strip_prefix_ci(args, keyword).ok_or(ParseError::Syntax)?;
    if lenient {
        text = text.trim_start_matches(' ');
    }
    let parsed = path_arg(text.as_bytes(), lenient, rcpt).ok_or(bad)?;
    let params = text.get(parsed.end..).ok_or(bad)?;
    Ok((parsed.arg, parsed.utf8, text, params))
}

fn parse_mail(args: &str, opts: ParseOptions) -> Result<Command<'_>, ParseError> {
    let bad = ParseError::BadSender;
    let (arg, utf8, text, params) = path_and_params(args, "FROM:", opts.lenient, false, bad)?;
    let params = mail_params(params)?;
    if utf8 && !params.smtputf8 {
        return Err(ParseError::Utf8NotPermitted);
    }
    let from = match arg {
        PathArg::Mailbox(span) => ReversePath::Mailbox(span.mailbox(text).ok_or(bad)?),
        PathArg::Null => ReversePath::Null,
        PathArg::Postmaster => return Err(bad),
    };
    Ok(Command::Mail { from, params })
}

fn parse_rcpt(args: &str, opts: ParseOptions) -> Result<Command<'_>, ParseError> {
    let bad = ParseError::BadRecipient;
    let (arg, utf8, text, params) = path_and_params(args, "TO:", opts.lenient, true, bad)?;
    let params = rcpt_params(params, opts.utf8_addresses)?;
    if utf8 && !opts.utf8_addresses {
        return Err(ParseError::Utf8NotPermitted);
    }
    let to = match arg {
        PathArg::Mailbox(span) => ForwardPath::Mailbox(span.mailbox(text).ok_or(bad)?),
        PathArg::Postmaster => ForwardPath::Postmaster,
        PathArg::Null => return Err(bad),
    };
    Ok(Command::Rcpt { to, params })
}

// ---------------------------------------------------------------------------
// ESMTP parameters
// ---------------------------------------------------------------------------

/// `esmtp-param = esmtp-keyword ["=" esmtp-value]`, where
/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")` and the value
/// runs to the next space (each parameter checks its own value).
fn esmtp_param(i: &[u8]) -> Res<'_, (&[u8], Option<&[u8]>)> {
    (
        verify(take_while1(|b| is(b, LDH_ASCII)), |k: &[u8]| {
            k.first().is_some_and(u8::is_ascii_alphanumeric)
        }),
        opt(preceded(char('='), take_while(|b| b != b' '))),
    )
        .parse(i)
}

/// Calls `f` with each `(keyword, value)` of the space-separated parameter
/// text `s`, stopping at the first error.
fn for_each_param<'a>(
    s: &'a str,
    mut f: impl FnMut(&'a str, Option<&'a str>) -> Result<(), ParseError>,
) -> Result<(), ParseError> {
    let all = s.as_bytes();
    let mut input = all;
    loop {
        while let [b' ', rest @ ..] = input {
            input = rest;
        }
        if input.is_empty() {
            return Ok(());
        }
        let start = all.len().saturating_sub(input.len());
        let (rest, (k, v)) = esmtp_param(input).map_err(|_| ParseError::Syntax)?;
        if !matches!(rest.first(), None | Some(b' ')) {
            return Err(ParseError::Syntax);
        }
        let k_end = start.saturating_add(k.len());
        let keyword = s.get(start..k_end).ok_or(ParseError::Syntax)?;
        let value = match v {
            Some(v) => {
                let v_start = k_end.saturating_add(1);
                Some(
                    s.get(v_start..v_start.saturating_add(v.len()))
                        .ok_or(ParseError::Syntax)?,
                )
            }
            None => None,
        };
        f(keyword, value)?;
        input = rest;
    }
}

/// `xtext = *( xchar / hexchar )`, `hexchar = "+" 2(DIGIT / "A"-"F")`;
/// with `unicode`, non-ASCII characters are taken as they are too.
fn xtext(i: &[u8], unicode: bool) -> Res<'_, &[u8]> {
    let hexchar = recognize((
        char('+'),
        take_while_m_n(2, 2, |b: u8| matches!(b, b'0'..=b'9' | b'A'..=b'F')),
    ));
    let chars = take_while1(|b| is(b, XCHAR) || (unicode && b >= 0x80));
    recognize(many0_count(alt((chars, hexchar)))).parse(i)
}

/// Whether `s` is non-empty xtext of at most `max` octets.
fn is_xtext(s: &str, max: usize, unicode: bool) -> bool {
    !s.is_empty()
        && s.len() <= max
        && all_consuming(|i| xtext(i, unicode))
            .parse(s.as_bytes())
            .is_ok()
}

/// Parses 1 to 20 ASCII digits as a `u64`.
fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Parses SIZE's 1 to 20 ASCII digits (RFC 1870 `size-value`); a value
/// past `u64::MAX` is `u64::MAX` (too big for any server, not bad syntax).
fn parse_size(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(parse_u64(s).unwrap_or(u64::MAX))
}

fn mail_params(s: &str) -> Result<MailParams<'_>, ParseError> {
    use ParseError::{BadParameterValue as Bad, UnknownParameter as Unknown};
    let mut p = MailParams::default();
    for_each_param(s, |k, v| {
        let eq = |name: &str| k.eq_ignore_ascii_case(name);
        if eq("SIZE") {
            if p.size.is_some() {
                return Err(Unknown);
            }
            p.size = Some(v.and_then(parse_size).ok_or(Bad)?);
        } else if eq("BODY") {
            if p.body.is_some() {
                return Err(Unknown);
            }
            let v = v.ok_or(Bad)?;
            p.body = Some(if v.eq_ignore_ascii_case("8BITMIME") {
                BodyType::EightBitMime
            } else if v.eq_ignore_ascii_case("7BIT") {
                BodyType::SevenBit
            } else if v.eq_ignore_ascii_case("BINARYMIME") {
                BodyType::BinaryMime
            } else {
                return Err(Bad);
            });
        } else if eq("SMTPUTF8") {
            if p.smtputf8 {
                return Err(Unknown);
            }
            if v.is_some() {
                return Err(Bad);
            }
            p.smtputf8 = true;
        } else if eq("RET") {
            if p.ret.is_some() {
                return Err(Unknown);
            }
            let v = v.ok_or(Bad)?;
            p.ret = Some(if v.eq_ignore_ascii_case("FULL") {
                Ret::Full
            } else if v.eq_ignore_ascii_case("HDRS") {
                Ret::Hdrs
            } else {
                return Err(Bad);
            });
        } else if eq("ENVID") {
            if p.envid.is_some() {
                return Err(Unknown);
            }
            p.envid = Some(v.filter(|v| is_xtext(v, 100, false)).ok_or(Bad)?);
        } else if eq("AUTH") {
            if p.auth.is_some() {
                return Err(Unknown);
            }
            p.auth = Some(
                v.filter(|v| *v == "<>" || is_xtext(v, usize::MAX, false))
                    .ok_or(Bad)?,
            );
        } else if eq("REQUIRETLS") {
            if p.requiretls {
                return Err(Unknown);
            }
            if v.is_some() {
                return Err(Bad);
            }
            p.requiretls = true;
        } else {
            return Err(Unknown);
        }
        Ok(())
    })?;
    Ok(p)
}

/// `NOTIFY=NEVER / notify-list-element *("," notify-list-element)`.
fn parse_notify(v: &str) -> Option<Notify> {
    let mut n = Notify::default();
    for item in v.split(',') {
        let flag = if item.eq_ignore_ascii_case("SUCCESS") {
            &mut n.success
        } else if item.eq_ignore_ascii_case("FAILURE") {
            &mut n.failure
        } else if item.eq_ignore_ascii_case("DELAY") {
            &mut n.delay
        } else if item.eq_ignore_ascii_case("NEVER") {
            &mut n.never
        } else {
            return None;
        };
        *flag = true;
    }
    let any = n.success || n.failure || n.delay;
    (n.never != any).then_some(n)
}

/// `ORCPT=addr-type ";" xtext`, at most 500 octets. With SMTPUTF8 in
/// effect, a `utf-8` address may also hold raw non-ASCII characters
/// (RFC 6533 `utf-8-addr-unitext`, checked loosely as xtext).
fn is_orcpt(v: &str, utf8: bool) -> bool {
    let Some((addr_type, addr)) = v.split_once(';') else {
        return false;
    };
    v.len() <= 500
        && !addr_type.is_empty()
        && addr_type.bytes().all(|b| b.is_ascii() && is(b, ATEXT))
        && is_xtext(
            addr,
            usize::MAX,
            utf8 && addr_type.eq_ignore_ascii_case("utf-8"),
        )
}

fn rcpt_params(s: &str, utf8: bool) -> Result<RcptParams<'_>, ParseError> {
    use ParseError::{BadParameterValue as Bad, UnknownParameter as Unknown};
    let mut p = RcptParams::default();
    for_each_param(s, |k, v| {
        if k.eq_ignore_ascii_case("NOTIFY") {
            if p.notify.is_some() {
                return Err(Unknown);
            }
            p.notify = Some(v.and_then(parse_notify).ok_or(Bad)?);
        } else if k.eq_ignore_ascii_case("ORCPT") {
            if p.orcpt.is_some() {
                return Err(Unknown);
            }
            p.orcpt = Some(v.filter(|v| is_orcpt(v, utf8)).ok_or(Bad)?);
        } else {
            return Err(Unknown);
        }
        Ok(())
    })?;
    Ok(p)
}

// ---------------------------------------------------------------------------
// Other commands
// ---------------------------------------------------------------------------

/// Space (SP) runs separating arguments.
fn spaces(i: &[u8]) -> Res<'_, &[u8]> {
    take_while1(|b| b == b' ').parse(i)
}

/// The one argument of HELO/EHLO/LHLO: a token of printable ASCII.
fn hello_domain(args: &str) -> Result<&str, ParseError> {
    let d = args.trim_start_matches(' ');
    if !d.is_empty() && d.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(d)
    } else {
        Err(ParseError::Syntax)
    }
}

/// A free-text argument (VRFY, EXPN, HELP): trimmed, no control characters.
fn text_arg(args: &str) -> Result<Option<&str>, ParseError> {
    let t = args.trim_start_matches(' ');
    if t.bytes().any(|b| b.is_ascii_control()) {
        Err(ParseError::Syntax)
    } else {
        Ok((!t.is_empty()).then_some(t))
    }
}

/// `BDAT SP chunk-size [SP end-marker]` (RFC 3030 §3).
fn parse_bdat(args: &str) -> Result<Command<'_>, ParseError> {
    let args = args.trim_start_matches(' ');
    let (_, (size, last)) = all_consuming((
        take_while_m_n(1, 20, |b: u8| b.is_ascii_digit()),
        opt(preceded(spaces, tag_no_case("LAST"))),
    ))
    .parse(args.as_bytes())
    .map_err(|_| ParseError::Syntax)?;
    let size = core::str::from_utf8(size)
        .ok()
        .and_then(parse_u64)
        .ok_or(ParseError::Syntax)?;
    Ok(Command::Bdat {
        size,
        last: last.is_some(),
    })
}

/// `AUTH SP mechanism [SP initial-response]` (RFC 4954 §4).
fn parse_auth(args: &str) -> Result<Command<'_>, ParseError> {
    let args = args.trim_start_matches(' ');
    let bytes = args.as_bytes();
    let (_, (mech, initial)) = all_consuming((
        take_while_m_n(1, 20, |b| is(b, MECH)),
        opt(preceded(spaces, take_while1(|b| is(b, B64)))),
    ))
    .parse(bytes)
    .map_err(|_| ParseError::Syntax)?;
    let mechanism = args.get(..mech.len()).ok_or(ParseError::Syntax)?;
    let initial = match initial {
        Some(ir) => Some(
            args.get(bytes.len().saturating_sub(ir.len())..)
                .ok_or(ParseError::Syntax)?,
        ),
        None => None,
    };
    Ok(Command::Auth { mechanism, initial })
}

/// Requires an empty argument.
fn no_args<'a>(args: &str, cmd: Command<'a>) -> Result<Command<'a>, ParseError> {
    if args.bytes().all(|b| b == b' ') {
        Ok(cmd)
    } else {
        Err(ParseError::Syntax)
    }
}

/// A recognised command verb.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Helo,
    Ehlo,
    Lhlo,
    Mail,
    Rcpt,
    Data,
    Bdat,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Expn,
    Help,
    StartTls,
    Auth,
    Xclient,
    Xforward,
}

/// Recognises a verb, case-insensitively.
fn verb(v: &[u8]) -> Option<Verb> {
    const fn w(s: &[u8; 4]) -> u32 {
        u32::from_be_bytes(*s)
    }
    if let Ok(four) = <[u8; 4]>::try_from(v) {
        // Clearing bit 5 upper-cases letters and maps no other octet to a
        // letter, so only the right letters in any case compare equal.
        return Some(match u32::from_be_bytes(four) & 0xDFDF_DFDF {
            x if x == w(b"MAIL") => Verb::Mail,
            x if x == w(b"RCPT") => Verb::Rcpt,
            x if x == w(b"DATA") => Verb::Data,
            x if x == w(b"EHLO") => Verb::Ehlo,
            x if x == w(b"BDAT") => Verb::Bdat,
            x if x == w(b"RSET") => Verb::Rset,
            x if x == w(b"QUIT") => Verb::Quit,
            x if x == w(b"HELO") => Verb::Helo,
            x if x == w(b"LHLO") => Verb::Lhlo,
            x if x == w(b"NOOP") => Verb::Noop,
            x if x == w(b"VRFY") => Verb::Vrfy,
            x if x == w(b"EXPN") => Verb::Expn,
            x if x == w(b"HELP") => Verb::Help,
            x if x == w(b"AUTH") => Verb::Auth,
            _ => return None,
        });
    }
    if v.eq_ignore_ascii_case(b"STARTTLS") {
        Some(Verb::StartTls)
    } else if v.eq_ignore_ascii_case(b"XCLIENT") {
        Some(Verb::Xclient)
    } else if v.eq_ignore_ascii_case(b"XFORWARD") {
        Some(Verb::Xforward)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------

/// Parses one command line (without the trailing CRLF).
///
/// Every string in the result borrows from `line`; nothing is allocated.
/// See the [module documentation](self) for the grammar and for which
/// [`ParseError`] each defect yields.
///
/// ```
/// use smtp_proto::command::*;
/// use smtp_proto::parse::parse_command;
///
/// let cmd = parse_command(b"MAIL FROM:<a@example.com> SIZE=100", ParseOptions::default());
/// let Ok(Command::Mail { from: ReversePath::Mailbox(m), params }) = cmd else {
///     panic!("not a MAIL command");
/// };
/// assert_eq!(m.domain, "example.com");
/// assert_eq!(params.size, Some(100));
/// ```
pub fn parse_command(line: &[u8], opts: ParseOptions) -> Result<Command<'_>, ParseError> {
    let mut line = line;
    while let [rest @ .., b' ' | b'\t'] = line {
        line = rest;
    }
    // The longest verb has 8 octets: a space further on cannot end a known one.
    let head = line.get(..9).unwrap_or(line);
    let (verb_octets, args): (&[u8], &[u8]) = match memchr(b' ', head) {
        Some(sp) => (
            line.get(..sp).unwrap_or_default(),
            line.get(sp + 1..).unwrap_or_default(),
        ),
        None => (line, &[]),
    };
    let verb = verb(verb_octets).ok_or(ParseError::UnknownCommand)?;
    let args = core::str::from_utf8(args).map_err(|_| ParseError::Syntax)?;
    match verb {
        Verb::Mail => parse_mail(args, opts),
        Verb::Rcpt => parse_rcpt(args, opts),
        Verb::Ehlo => Ok(Command::Ehlo {
            domain: hello_domain(args)?,
        }),
        Verb::Helo => Ok(Command::Helo {
            domain: hello_domain(args)?,
        }),
        Verb::Lhlo => Ok(Command::Lhlo {
            domain: hello_domain(args)?,
        }),
        Verb::Data => no_args(args, Command::Data),
        Verb::Bdat => parse_bdat(args),
        Verb::Rset => no_args(args, Command::Rset),
        Verb::Noop => Ok(Command::Noop),
        Verb::Quit => no_args(args, Command::Quit),
        Verb::StartTls => no_args(args, Command::StartTls),
        Verb::Vrfy => Ok(Command::Vrfy {
            arg: text_arg(args)?.ok_or(ParseError::Syntax)?,
        }),
        Verb::Expn => Ok(Command::Expn {
            arg: text_arg(args)?.ok_or(ParseError::Syntax)?,
        }),
        Verb::Help => Ok(Command::Help {
            topic: text_arg(args)?,
        }),
        Verb::Auth => parse_auth(args),
        Verb::Xclient => Ok(Command::Xclient {
            attrs: ForwardAttrs::parse(args, &ForwardAttr::XCLIENT).ok_or(ParseError::Syntax)?,
        }),
        Verb::Xforward => Ok(Command::Xforward {
            attrs: ForwardAttrs::parse(args, &ForwardAttr::XFORWARD).ok_or(ParseError::Syntax)?,
        }),
    }
}

/// Parses a mailbox `local@domain` (no angle brackets) per RFC 5321 §4.1.2
/// (+ RFC 6531 if `utf8`).
///
/// The whole of `s` must be the mailbox: no brackets, no source route, no
/// surrounding spaces. `lenient` accepts leading, trailing and doubled dots
/// in the local part. The length limits of RFC 5321 §4.5.3.1 apply (the
/// mailbox counts as a path with its two brackets). Returns `None` if `s`
/// is not such a mailbox, or is non-ASCII while `utf8` is false.
///
/// ```
/// use smtp_proto::parse::parse_mailbox;
///
/// let m = parse_mailbox("\"john doe\"@[192.0.2.1]", false, false).unwrap();
/// assert_eq!(m.local_part, "\"john doe\"");
/// assert!(m.is_address_literal());
/// assert!(parse_mailbox("jörg@example.com", false, false).is_none());
/// ```
pub fn parse_mailbox(s: &str, utf8: bool, lenient: bool) -> Option<Mailbox<'_>> {
    if s.len().saturating_add(2) > MAX_PATH || (!utf8 && !s.is_ascii()) {
        return None;
    }
    let (rest, span) = mailbox(s.as_bytes(), lenient).ok()?;
    if !rest.is_empty() {
        return None;
    }
    span.mailbox(s)
}

/// Decodes RFC 3461 xtext (`+XX` hex escapes); `None` if malformed.
///
/// xtext is printable ASCII except `+` and `=`, with `+` followed by two
/// upper-case hexadecimal digits standing for one octet. The decoded octets
/// must form UTF-8, as the result is a [`String`].
///
/// ```
/// use smtp_proto::parse::decode_xtext;
///
/// assert_eq!(decode_xtext("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
/// assert_eq!(decode_xtext("a+2b"), None);
/// ```
pub fn decode_xtext(s: &str) -> Option<String> {
    fn hex(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'+' {
            let hi = hex(bytes.next()?)?;
            let lo = hex(bytes.next()?)?;
            out.push((hi << 4) | lo);
        } else if is(b, XCHAR) {
            out.push(b);
        } else {
            return None;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Input made of the octets that matter to paths, often shaped like one.
    fn path_like() -> impl Strategy<Value = Vec<u8>> {
        fn pieces(list: &str, n: usize) -> impl Strategy<Value = String> {
            let list: Vec<String> = list
                .split('|')
                .map(|p| p.replace('X', &"x".repeat(63)))
                .collect();
            prop::collection::vec(prop::sample::select(list), 0..n).prop_map(|p| p.concat())
        }
        const ANY: &str = "<|>|@|.|-|a|Z|0|9|!|~|\"|[|]|:|,| |_|é|abcdefghij|0123456789-";
        const LOCAL: &str = "a|Z|0|.|.|!|~|{|abcdefghij|-|\"|é| |@";
        const DOMAIN: &str = "a|b-c|-|.|.|0|x|abcdefghij|_|[|é|X";
        const LOCAL_OK: &str = "a|Z|0|!|~|{|abcdefghij|-|.";
        const DOMAIN_OK: &str = "a|b-c|0|x|abcdefghij|-|.";
        prop_oneof![
            pieces(ANY, 80),
            (pieces(LOCAL, 8), pieces(DOMAIN, 8), pieces(ANY, 4))
                .prop_map(|(l, d, t)| format!("<{l}@{d}>{t}")),
            (pieces(LOCAL_OK, 6), pieces(DOMAIN_OK, 6), pieces(ANY, 2))
                .prop_map(|(l, d, t)| format!("<{l}@{d}>{t}")),
        ]
        .prop_map(String::into_bytes)
    }

    fn check_fast_path(s: &[u8]) {
        if let Some((span, end)) = simple_path(s) {
            for lenient in [false, true] {
                let (rest, slow) = path(s, lenient).expect("fast path accepted a bad path");
                assert_eq!(s.len() - rest.len(), end, "{s:?}");
                assert_eq!(
                    (slow.start, slow.local, slow.domain),
                    (span.start, span.local, span.domain),
                    "{s:?}"
                );
            }
        }
    }

    #[test]
    fn fast_path_examples() {
        let ok: &[&[u8]] = &[
            b"<a@b>",
            b"<someone.long@example.com> SIZE=1",
            b"<a-b@c-d.e>",
        ];
        for s in ok {
            assert!(simple_path(s).is_some(), "{s:?}");
            check_fast_path(s);
        }
        let punt: &[&[u8]] = &[
            b"<a.@b>",
            b"<.a@b>",
            b"<a..b@c>",
            b"<@b>",
            b"<a@>",
            b"<a@b.>",
            b"<a@-b>",
            b"<a@b->",
            b"<a@b..c>",
            b"<\"a\"@b>",
            b"<a@[1.2.3.4]>",
            b"<@r:a@b>",
            b"<a@b",
            b"a@b>",
        ];
        for s in punt {
            assert!(simple_path(s).is_none(), "{s:?}");
        }
        let long_label = format!("<a@{}>", "x".repeat(64));
        assert!(simple_path(long_label.as_bytes()).is_none());
        let label63 = format!("<a@{}>", "x".repeat(63));
        assert!(simple_path(label63.as_bytes()).is_some());
        check_fast_path(label63.as_bytes());
        let local64 = "l".repeat(64);
        let ok = format!("<{local64}@b>");
        assert!(simple_path(ok.as_bytes()).is_some());
        check_fast_path(ok.as_bytes());
        assert!(simple_path(format!("<{local64}l@b>").as_bytes()).is_none());
        // 1 + 64 + 1 + 189 + 1 = 256 octets, then one too many.
        let domain = |n: usize| format!("{0}.{0}.{1}", "d".repeat(63), "e".repeat(n - 128));
        let path256 = format!("<{local64}@{}>", domain(189));
        assert_eq!(path256.len(), 256);
        assert!(simple_path(path256.as_bytes()).is_some());
        check_fast_path(path256.as_bytes());
        let path257 = format!("<{local64}@{}>", domain(190));
        assert!(simple_path(path257.as_bytes()).is_none());
        assert!(path(path257.as_bytes(), false).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(5000))]

        /// Whenever the fast path answers, the nom grammar agrees.
        #[test]
        fn fast_path_agrees_with_grammar(s in path_like()) {
            check_fast_path(&s);
        }
    }
}
