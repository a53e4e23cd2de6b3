//! Parsed SMTP/LMTP commands (RFC 5321 §4.1, RFC 2033, RFC 3207, RFC 4954, RFC 3030).
//!
//! Every value borrows from the command line it was parsed from: parsing
//! never allocates. The grammar lives in [`crate::parse`].

/// One parsed command line (without its CRLF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<'a> {
    /// `HELO domain` (RFC 5321 §4.1.1.1).
    Helo {
        /// The client's claimed identity: a domain or an address literal, as sent.
        domain: &'a str,
    },
    /// `EHLO domain` (RFC 5321 §4.1.1.1).
    Ehlo {
        /// The client's claimed identity: a domain or an address literal, as sent.
        domain: &'a str,
    },
    /// `LHLO domain` (RFC 2033 §4.1).
    Lhlo {
        /// The client's claimed identity: a domain or an address literal, as sent.
        domain: &'a str,
    },
    /// `MAIL FROM:<reverse-path> [params]` (RFC 5321 §4.1.1.2).
    Mail {
        /// The reverse path; `<>` is [`ReversePath::Null`].
        from: ReversePath<'a>,
        /// ESMTP parameters.
        params: MailParams<'a>,
    },
    /// `RCPT TO:<forward-path> [params]` (RFC 5321 §4.1.1.3).
    Rcpt {
        /// The forward path.
        to: ForwardPath<'a>,
        /// ESMTP parameters.
        params: RcptParams<'a>,
    },
    /// `DATA` (RFC 5321 §4.1.1.4).
    Data,
    /// `BDAT size [LAST]` (RFC 3030).
    Bdat {
        /// Exact number of octets that follow the command line.
        size: u64,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// `RSET` (RFC 5321 §4.1.1.5).
    Rset,
    /// `NOOP [string]` (RFC 5321 §4.1.1.9).
    Noop,
    /// `QUIT` (RFC 5321 §4.1.1.10).
    Quit,
    /// `VRFY string` (RFC 5321 §4.1.1.6).
    Vrfy {
        /// The argument, as sent (trimmed).
        arg: &'a str,
    },
    /// `EXPN string` (RFC 5321 §4.1.1.7).
    Expn {
        /// The argument, as sent (trimmed).
        arg: &'a str,
    },
    /// `HELP [string]` (RFC 5321 §4.1.1.8).
    Help {
        /// The optional topic.
        topic: Option<&'a str>,
    },
    /// `STARTTLS` (RFC 3207).
    StartTls,
    /// `AUTH mechanism [initial-response]` (RFC 4954).
    Auth {
        /// The SASL mechanism name, as sent (compare case-insensitively).
        mechanism: &'a str,
        /// The initial response: base64 text, or `=` for an empty one.
        initial: Option<&'a str>,
    },
    /// `XCLIENT attribute=value ...` (Postfix's XCLIENT_README): a front
    /// proxy hands over the real client's facts; the session restarts.
    Xclient {
        /// The attributes, checked against the grammar.
        attrs: ForwardAttrs<'a>,
    },
    /// `XFORWARD attribute=value ...` (Postfix's XFORWARD_README): a content
    /// filter's client passes the original client's facts for the next
    /// transaction.
    Xforward {
        /// The attributes, checked against the grammar.
        attrs: ForwardAttrs<'a>,
    },
}

impl Command<'_> {
    /// The command verb in upper case, for logs and sequence checks.
    pub fn verb(&self) -> &'static str {
        match self {
            Command::Helo { .. } => "HELO",
            Command::Ehlo { .. } => "EHLO",
            Command::Lhlo { .. } => "LHLO",
            Command::Mail { .. } => "MAIL",
            Command::Rcpt { .. } => "RCPT",
            Command::Data => "DATA",
            Command::Bdat { .. } => "BDAT",
            Command::Rset => "RSET",
            Command::Noop => "NOOP",
            Command::Quit => "QUIT",
            Command::Vrfy { .. } => "VRFY",
            Command::Expn { .. } => "EXPN",
            Command::Help { .. } => "HELP",
            Command::StartTls => "STARTTLS",
            Command::Auth { .. } => "AUTH",
            Command::Xclient { .. } => "XCLIENT",
            Command::Xforward { .. } => "XFORWARD",
        }
    }
}

impl Command<'_> {
    /// Appends the whole command line, CRLF included, in canonical form.
    ///
    /// This is the inverse of [`crate::parse::parse_command`]: for every
    /// command the parser produces, parsing the serialized line (without its
    /// CRLF, with the same [`ParseOptions`]) gives the command back. Paths
    /// are written in angle brackets without a source route; UTF-8 mailboxes
    /// are written as they are (RFC 6531); MAIL and RCPT parameters follow in
    /// a fixed order (`SIZE BODY SMTPUTF8 RET ENVID AUTH REQUIRETLS`,
    /// `NOTIFY ORCPT`). `ENVID`, `AUTH` and `ORCPT` hold xtext already (as
    /// the parser returns them); build them from plain text with
    /// [`encode_xtext`].
    ///
    /// Strings are written as they are: a value holding CR or LF (which the
    /// parser never produces) would break the line, so callers building
    /// commands by hand must validate them first.
    ///
    /// ```
    /// use smtp_proto::command::*;
    /// use smtp_proto::parse::parse_command;
    ///
    /// let line = b"MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME";
    /// let cmd = parse_command(line, ParseOptions::default()).unwrap();
    /// let mut out = Vec::new();
    /// cmd.write_to(&mut out);
    /// assert_eq!(out, b"MAIL FROM:<a@example.com> SIZE=100 BODY=8BITMIME\r\n");
    /// ```
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            Command::Helo { domain } | Command::Ehlo { domain } | Command::Lhlo { domain } => {
                push_words(out, &[self.verb(), " ", domain]);
            }
            Command::Mail { from, params } => {
                out.extend_from_slice(b"MAIL FROM:");
                match from {
                    ReversePath::Null => out.extend_from_slice(b"<>"),
                    ReversePath::Mailbox(m) => push_words(out, &["<", m.raw, ">"]),
                }
                params.write_to(out);
            }
            Command::Rcpt { to, params } => {
                out.extend_from_slice(b"RCPT TO:");
                match to {
                    ForwardPath::Postmaster => out.extend_from_slice(b"<Postmaster>"),
                    ForwardPath::Mailbox(m) => push_words(out, &["<", m.raw, ">"]),
                }
                params.write_to(out);
            }
            Command::Bdat { size, last } => {
                push_words(out, &["BDAT ", &size.to_string()]);
                if *last {
                    out.extend_from_slice(b" LAST");
                }
            }
            Command::Vrfy { arg } | Command::Expn { arg } => {
                push_words(out, &[self.verb(), " ", arg]);
            }
            Command::Help { topic: Some(t) } => push_words(out, &["HELP ", t]),
            Command::Auth { mechanism, initial } => {
                push_words(out, &["AUTH ", mechanism]);
                if let Some(ir) = initial {
                    push_words(out, &[" ", ir]);
                }
            }
            Command::Xclient { attrs } | Command::Xforward { attrs } => {
                push_words(out, &[self.verb(), " ", attrs.as_str()]);
            }
            Command::Data
            | Command::Rset
            | Command::Noop
            | Command::Quit
            | Command::StartTls
            | Command::Help { topic: None } => out.extend_from_slice(self.verb().as_bytes()),
        }
        out.extend_from_slice(b"\r\n");
    }

    /// The whole command line, CRLF included, as a new vector (see
    /// [`Command::write_to`]).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

fn push_words(out: &mut Vec<u8>, words: &[&str]) {
    for w in words {
        out.extend_from_slice(w.as_bytes());
    }
}

impl MailParams<'_> {
    /// Appends the parameters, each preceded by a space, in canonical order.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if let Some(size) = self.size {
            push_words(out, &[" SIZE=", &size.to_string()]);
        }
        if let Some(body) = self.body {
            push_words(
                out,
                &[
                    " BODY=",
                    match body {
                        BodyType::SevenBit => "7BIT",
                        BodyType::EightBitMime => "8BITMIME",
                        BodyType::BinaryMime => "BINARYMIME",
                    },
                ],
            );
        }
        if self.smtputf8 {
            out.extend_from_slice(b" SMTPUTF8");
        }
        if let Some(ret) = self.ret {
            push_words(
                out,
                &[
                    " RET=",
                    match ret {
                        Ret::Full => "FULL",
                        Ret::Hdrs => "HDRS",
                    },
                ],
            );
        }
        if let Some(envid) = self.envid {
            push_words(out, &[" ENVID=", envid]);
        }
        if let Some(auth) = self.auth {
            push_words(out, &[" AUTH=", auth]);
        }
        if self.requiretls {
            out.extend_from_slice(b" REQUIRETLS");
        }
    }
}

impl RcptParams<'_> {
    /// Appends the parameters, each preceded by a space, in canonical order.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        if let Some(n) = self.notify {
            out.extend_from_slice(b" NOTIFY=");
            n.write_to(out);
        }
        if let Some(orcpt) = self.orcpt {
            push_words(out, &[" ORCPT=", orcpt]);
        }
    }
}

impl Notify {
    /// Appends the value of `NOTIFY=`: `NEVER`, or the flags that are set,
    /// comma-separated in the order `SUCCESS,FAILURE,DELAY`. A value with no
    /// flag at all (which the parser never produces) is written as `NEVER`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let flags = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let mut first = true;
        if !self.never {
            for (_, name) in flags.iter().filter(|(on, _)| *on) {
                if !first {
                    out.push(b',');
                }
                out.extend_from_slice(name.as_bytes());
                first = false;
            }
        }
        if first {
            out.extend_from_slice(b"NEVER");
        }
    }
}

/// Encodes text as RFC 3461 xtext (for `ENVID=`, `ORCPT=` and `AUTH=`):
/// every octet outside `!`..`~`, and `+` and `=`, becomes `+XX` (upper-case
/// hexadecimal). The inverse of [`crate::parse::decode_xtext`].
///
/// ```
/// use smtp_proto::command::encode_xtext;
///
/// assert_eq!(encode_xtext("a+b=c d"), "a+2Bb+3Dc+20d");
/// ```
pub fn encode_xtext(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (b'!'..=b'~').contains(&b) && b != b'+' && b != b'=' {
            out.push(char::from(b));
        } else {
            out.push('+');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

/// An attribute of XCLIENT or XFORWARD (Postfix), by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ForwardAttr {
    /// `NAME`: the client's host name, as its reverse lookup found it.
    Name,
    /// `ADDR`: the client's address (`IPV6:` before an IPv6 address).
    Addr,
    /// `PORT`: the client's TCP port.
    Port,
    /// `PROTO`: `SMTP` or `ESMTP`, how the client greeted.
    Proto,
    /// `HELO`: the client's HELO or EHLO argument.
    Helo,
    /// `LOGIN`: the SASL login name (XCLIENT only).
    Login,
    /// `DESTADDR`: the address the client connected to (XCLIENT only).
    DestAddr,
    /// `DESTPORT`: the port the client connected to (XCLIENT only).
    DestPort,
    /// `IDENT`: the originating queue id or session id (XFORWARD only).
    Ident,
    /// `SOURCE`: `LOCAL` or `REMOTE`, where the message came from (XFORWARD only).
    Source,
}

impl ForwardAttr {
    /// The attributes XCLIENT takes, in the order the EHLO keyword lists them.
    pub const XCLIENT: [ForwardAttr; 8] = [
        ForwardAttr::Name,
        ForwardAttr::Addr,
        ForwardAttr::Port,
        ForwardAttr::Proto,
        ForwardAttr::Helo,
        ForwardAttr::Login,
        ForwardAttr::DestAddr,
        ForwardAttr::DestPort,
    ];

    /// The attributes XFORWARD takes, in the order the EHLO keyword lists them.
    pub const XFORWARD: [ForwardAttr; 7] = [
        ForwardAttr::Name,
        ForwardAttr::Addr,
        ForwardAttr::Port,
        ForwardAttr::Proto,
        ForwardAttr::Helo,
        ForwardAttr::Ident,
        ForwardAttr::Source,
    ];

    /// The attribute's name as written on the wire.
    pub fn name(self) -> &'static str {
        match self {
            ForwardAttr::Name => "NAME",
            ForwardAttr::Addr => "ADDR",
            ForwardAttr::Port => "PORT",
            ForwardAttr::Proto => "PROTO",
            ForwardAttr::Helo => "HELO",
            ForwardAttr::Login => "LOGIN",
            ForwardAttr::DestAddr => "DESTADDR",
            ForwardAttr::DestPort => "DESTPORT",
            ForwardAttr::Ident => "IDENT",
            ForwardAttr::Source => "SOURCE",
        }
    }

    /// Looks an attribute up by name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<ForwardAttr> {
        Self::XCLIENT
            .into_iter()
            .chain([ForwardAttr::Ident, ForwardAttr::Source])
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }
}

/// An attribute's value: the text, or one of the two "not known" markers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardValue {
    /// The value, xtext-decoded.
    Value(String),
    /// `[UNAVAILABLE]`: the value does not exist (e.g. no reverse name).
    Unavailable,
    /// `[TEMPUNAVAIL]`: the value could not be found for now (e.g. a DNS error).
    TempUnavail,
}

impl ForwardValue {
    /// The value when there is one.
    pub fn value(&self) -> Option<&str> {
        match self {
            ForwardValue::Value(v) => Some(v),
            _ => None,
        }
    }
}

/// The `attribute=value` list of an XCLIENT or XFORWARD command: names
/// known, values valid xtext. Iterate it with [`ForwardAttrs::iter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardAttrs<'a>(&'a str);

impl<'a> ForwardAttrs<'a> {
    /// Checks `s` (space-separated `NAME=xtext` pairs, at least one, names
    /// among `allowed`); `None` if it does not follow the grammar.
    pub fn parse(s: &'a str, allowed: &[ForwardAttr]) -> Option<ForwardAttrs<'a>> {
        let s = s.trim_matches(' ');
        let mut n = 0usize;
        for pair in s.split(' ').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=')?;
            let attr = ForwardAttr::from_name(name).filter(|a| allowed.contains(a))?;
            let _ = (attr, decode_value(value)?);
            n += 1;
        }
        (n > 0).then_some(ForwardAttrs(s))
    }

    /// The list as sent (for writing the command out again).
    pub fn as_str(&self) -> &'a str {
        self.0
    }

    /// The attributes in order, values decoded (a repeated name comes twice:
    /// the last one wins when applied).
    pub fn iter(&self) -> impl Iterator<Item = (ForwardAttr, ForwardValue)> + 'a {
        self.0.split(' ').filter_map(|pair| {
            let (name, value) = pair.split_once('=')?;
            Some((ForwardAttr::from_name(name)?, decode_value(value)?))
        })
    }

    /// Builds the text of an attribute list: each value xtext-encoded,
    /// `None` written as `[UNAVAILABLE]`. Pass it to
    /// [`ForwardAttrs::parse`] to make a command.
    pub fn encode(attrs: &[(ForwardAttr, Option<&str>)]) -> String {
        let mut out = String::new();
        for (attr, value) in attrs {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(attr.name());
            out.push('=');
            match value {
                Some(v) => out.push_str(&encode_xtext(v)),
                None => out.push_str("[UNAVAILABLE]"),
            }
        }
        out
    }
}

/// Decodes one attribute value.
fn decode_value(value: &str) -> Option<ForwardValue> {
    if value.eq_ignore_ascii_case("[UNAVAILABLE]") {
        Some(ForwardValue::Unavailable)
    } else if value.eq_ignore_ascii_case("[TEMPUNAVAIL]") {
        Some(ForwardValue::TempUnavail)
    } else {
        crate::parse::decode_xtext(value).map(ForwardValue::Value)
    }
}

/// A mailbox `local-part@domain` (RFC 5321 §4.1.2), borrowed as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mailbox<'a> {
    /// The whole mailbox text between the angle brackets, source route removed.
    pub raw: &'a str,
    /// The local part as sent: a dot-string, or a quoted string with its quotes.
    pub local_part: &'a str,
    /// The domain as sent: a domain name, or an address literal with its brackets.
    pub domain: &'a str,
}

impl Mailbox<'_> {
    /// Whether the domain is an address literal (`[192.0.2.1]`, `[IPv6:...]`).
    pub fn is_address_literal(&self) -> bool {
        self.domain.starts_with('[')
    }

    /// Whether any part of the mailbox is non-ASCII (needs SMTPUTF8, RFC 6531).
    pub fn is_utf8(&self) -> bool {
        !self.raw.is_ascii()
    }
}

/// The argument of `MAIL FROM:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReversePath<'a> {
    /// The null reverse path `<>` (bounces, DSNs).
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox<'a>),
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardPath<'a> {
    /// The special `<Postmaster>` without a domain (any case), always valid (RFC 5321 §4.1.1.3).
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox<'a>),
}

impl<'a> ReversePath<'a> {
    /// The address as sent, `""` for the null path `<>`.
    ///
    /// ```
    /// use smtp_proto::command::{Command, ReversePath};
    /// use smtp_proto::parse::parse_command;
    ///
    /// let Ok(Command::Mail { from, .. }) = parse_command(b"MAIL FROM:<a@example.org>", Default::default()) else {
    ///     unreachable!()
    /// };
    /// assert_eq!(from.as_str(), "a@example.org");
    /// assert_eq!(from.to_string(), "<a@example.org>");
    /// assert_eq!(ReversePath::Null.to_string(), "<>");
    /// ```
    pub fn as_str(&self) -> &'a str {
        match self {
            ReversePath::Null => "",
            ReversePath::Mailbox(m) => m.raw,
        }
    }
}

impl std::fmt::Display for ReversePath<'_> {
    /// The path as on the wire: `<address>`, or `<>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}>", self.as_str())
    }
}

impl<'a> ForwardPath<'a> {
    /// The address as sent, `Postmaster` for the bare `<Postmaster>`.
    pub fn as_str(&self) -> &'a str {
        match self {
            ForwardPath::Postmaster => "Postmaster",
            ForwardPath::Mailbox(m) => m.raw,
        }
    }
}

impl std::fmt::Display for ForwardPath<'_> {
    /// The path as on the wire: `<address>`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{}>", self.as_str())
    }
}

/// The `BODY=` parameter of MAIL (RFC 6152, RFC 3030).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// `BODY=7BIT`.
    #[default]
    SevenBit,
    /// `BODY=8BITMIME` (RFC 6152).
    EightBitMime,
    /// `BODY=BINARYMIME` (RFC 3030; requires BDAT).
    BinaryMime,
}

/// The `RET=` parameter of MAIL (RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ret {
    /// `RET=FULL`: return the full message in a DSN.
    Full,
    /// `RET=HDRS`: return only the headers.
    Hdrs,
}

/// The `NOTIFY=` parameter of RCPT (RFC 3461 §4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    /// `NEVER` was given (then the three flags are false).
    pub never: bool,
    /// `SUCCESS` was given.
    pub success: bool,
    /// `FAILURE` was given.
    pub failure: bool,
    /// `DELAY` was given.
    pub delay: bool,
}

/// ESMTP parameters of MAIL FROM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams<'a> {
    /// `SIZE=n` (RFC 1870).
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152 / RFC 3030).
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
    /// `RET=` (RFC 3461).
    pub ret: Option<Ret>,
    /// `ENVID=` as sent (xtext-encoded, RFC 3461 §4.4).
    pub envid: Option<&'a str>,
    /// `AUTH=` as sent (xtext mailbox or `<>`, RFC 4954 §5).
    pub auth: Option<&'a str>,
    /// `REQUIRETLS` (RFC 8689).
    pub requiretls: bool,
}

/// ESMTP parameters of RCPT TO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RcptParams<'a> {
    /// `NOTIFY=` (RFC 3461 §4.1).
    pub notify: Option<Notify>,
    /// `ORCPT=` as sent: `addr-type;xtext` (RFC 3461 §4.2).
    pub orcpt: Option<&'a str>,
}

/// Why a command line could not be parsed. Each maps to one exact reply
/// (see [`crate::reply`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The verb is not a known command: `500 5.5.2`.
    UnknownCommand,
    /// The arguments do not follow the command's grammar: `501 5.5.4`.
    Syntax,
    /// The reverse path of MAIL is not a valid address: `501 5.1.7`.
    BadSender,
    /// The forward path of RCPT is not a valid address: `501 5.1.3`.
    BadRecipient,
    /// An ESMTP parameter is not known (or given twice): `555 5.5.4`.
    UnknownParameter,
    /// A known parameter has an invalid value: `501 5.5.4`.
    BadParameterValue,
    /// A non-ASCII address without SMTPUTF8: `553 5.6.7`.
    Utf8NotPermitted,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ParseError::UnknownCommand => "unknown command",
            ParseError::Syntax => "syntax error in the arguments",
            ParseError::BadSender => "invalid sender address",
            ParseError::BadRecipient => "invalid recipient address",
            ParseError::UnknownParameter => "unknown or repeated parameter",
            ParseError::BadParameterValue => "invalid parameter value",
            ParseError::Utf8NotPermitted => "non-ASCII address without SMTPUTF8",
        })
    }
}

impl std::error::Error for ParseError {}

/// Options that change how a command line is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParseOptions {
    /// Non-ASCII addresses are allowed in RCPT (the transaction's MAIL carried
    /// `SMTPUTF8`). For MAIL itself, the `SMTPUTF8` parameter on the same line
    /// decides.
    pub utf8_addresses: bool,
    /// Accept common real-world address defects: a local part with a leading,
    /// trailing or doubled dot (`local.@domain`), and a space after the colon
    /// (`MAIL FROM: <a@b>`). Strict by default.
    pub lenient: bool,
}
