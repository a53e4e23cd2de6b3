//! Table-driven and property tests of the command-line grammar.
#![allow(clippy::unwrap_used)]

use smtp_proto::command::*;
use smtp_proto::parse::*;

use ParseError::*;
use proptest::prelude::*;
use std::net::Ipv6Addr;

const STRICT: ParseOptions = ParseOptions {
    utf8_addresses: false,
    lenient: false,
};
const LENIENT: ParseOptions = ParseOptions {
    utf8_addresses: false,
    lenient: true,
};
const UTF8: ParseOptions = ParseOptions {
    utf8_addresses: true,
    lenient: false,
};

type Expected = Result<Command<'static>, ParseError>;

/// A mailbox from its raw text, split at the last `@`.
fn mb(raw: &'static str) -> Mailbox<'static> {
    let (local_part, domain) = raw.rsplit_once('@').expect("test mailbox has an @");
    Mailbox {
        raw,
        local_part,
        domain,
    }
}

fn mail(raw: &'static str) -> Expected {
    mail_p(raw, MailParams::default())
}

fn mail_p(raw: &'static str, params: MailParams<'static>) -> Expected {
    Ok(Command::Mail {
        from: ReversePath::Mailbox(mb(raw)),
        params,
    })
}

fn null_p(params: MailParams<'static>) -> Expected {
    Ok(Command::Mail {
        from: ReversePath::Null,
        params,
    })
}

fn rcpt(raw: &'static str) -> Expected {
    rcpt_p(raw, RcptParams::default())
}

fn rcpt_p(raw: &'static str, params: RcptParams<'static>) -> Expected {
    Ok(Command::Rcpt {
        to: ForwardPath::Mailbox(mb(raw)),
        params,
    })
}

fn postmaster(params: RcptParams<'static>) -> Expected {
    Ok(Command::Rcpt {
        to: ForwardPath::Postmaster,
        params,
    })
}

fn size(n: u64) -> MailParams<'static> {
    MailParams {
        size: Some(n),
        ..MailParams::default()
    }
}

fn body(b: BodyType) -> MailParams<'static> {
    MailParams {
        body: Some(b),
        ..MailParams::default()
    }
}

fn utf8() -> MailParams<'static> {
    MailParams {
        smtputf8: true,
        ..MailParams::default()
    }
}

fn notify(never: bool, success: bool, failure: bool, delay: bool) -> RcptParams<'static> {
    RcptParams {
        notify: Some(Notify {
            never,
            success,
            failure,
            delay,
        }),
        orcpt: None,
    }
}

fn helo(domain: &'static str) -> Expected {
    Ok(Command::Helo { domain })
}

fn ehlo(domain: &'static str) -> Expected {
    Ok(Command::Ehlo { domain })
}

fn bdat(size: u64, last: bool) -> Expected {
    Ok(Command::Bdat { size, last })
}

fn auth(mechanism: &'static str, initial: Option<&'static str>) -> Expected {
    Ok(Command::Auth { mechanism, initial })
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

/// The big table: (line, options, expected result).
#[rustfmt::skip]
fn cases() -> Vec<(&'static str, ParseOptions, Expected)> {
    let local64 = leak("a".repeat(64));
    let local65 = leak("a".repeat(65));
    let label63 = leak(format!("{}.com", "b".repeat(63)));
    let label64 = leak(format!("{}.com", "b".repeat(64)));
    // `<` + 64 + `@` + domain + `>` = 256 octets exactly, then one more.
    let long_domain = |n: usize| {
        let mut labels = Vec::new();
        let mut left = n;
        while left > 0 {
            let len = left.min(63);
            labels.push("c".repeat(len));
            left = left.saturating_sub(len + 1);
        }
        labels.join(".")
    };
    let dom189 = long_domain(189);
    assert_eq!(dom189.len(), 189);
    let dom190 = long_domain(190);
    assert_eq!(dom190.len(), 190);
    let path256 = leak(format!("{local64}@{dom189}"));
    let path257 = leak(format!("{local64}@{dom190}"));
    let envid100 = leak("e".repeat(100));
    let envid101 = leak("e".repeat(101));

    vec![
        // ---- HELO / EHLO / LHLO (RFC 5321 §4.1.1.1, RFC 2033) ----
        ("HELO relay.example.org", STRICT, helo("relay.example.org")),
        ("EHLO relay.example.org", STRICT, ehlo("relay.example.org")),
        ("ehlo Relay.Example.ORG", STRICT, ehlo("Relay.Example.ORG")),
        ("eHlO x", STRICT, ehlo("x")),
        ("LHLO foo.edu", STRICT, Ok(Command::Lhlo { domain: "foo.edu" })),
        ("EHLO [192.0.2.1]", STRICT, ehlo("[192.0.2.1]")),
        ("EHLO [IPv6:2001:db8::1]", STRICT, ehlo("[IPv6:2001:db8::1]")),
        ("EHLO my_host", STRICT, ehlo("my_host")),
        ("EHLO host.example  \t ", STRICT, ehlo("host.example")),
        ("EHLO   host.example", STRICT, ehlo("host.example")),
        ("EHLO", STRICT, Err(Syntax)),
        ("EHLO   ", STRICT, Err(Syntax)),
        ("HELO", STRICT, Err(Syntax)),
        ("LHLO", STRICT, Err(Syntax)),
        ("EHLO two words", STRICT, Err(Syntax)),
        ("EHLO héllo.example", STRICT, Err(Syntax)),
        ("EHLO a\u{7f}b", STRICT, Err(Syntax)),
        ("EHLOX foo", STRICT, Err(UnknownCommand)),
        ("HELO\tfoo", STRICT, Err(UnknownCommand)),
        // ---- MAIL (RFC 5321 §4.1.1.2, examples of §D) ----
        ("MAIL FROM:<Smith@bar.com>", STRICT, mail("Smith@bar.com")),
        ("mail from:<Smith@bar.com>", STRICT, mail("Smith@bar.com")),
        ("MaIl FrOm:<Smith@bar.com>", STRICT, mail("Smith@bar.com")),
        ("MAIL FROM:<Smith@bar.com>   ", STRICT, mail("Smith@bar.com")),
        ("MAIL FROM:<JQP@bar.com>", STRICT, mail("JQP@bar.com")),
        ("MAIL FROM:<someone.long@example.com>", STRICT, mail("someone.long@example.com")),
        ("MAIL FROM:<a!#$%&'*+-/=?^_`{|}~z@x.y>", STRICT, mail("a!#$%&'*+-/=?^_`{|}~z@x.y")),
        ("MAIL FROM:<a.b.c@d-e.f9>", STRICT, mail("a.b.c@d-e.f9")),
        ("MAIL FROM:<u@123.example>", STRICT, mail("u@123.example")),
        ("MAIL FROM:<u@localhost>", STRICT, mail("u@localhost")),
        ("MAIL FROM:<>", STRICT, null_p(MailParams::default())),
        ("MAIL FROM:<> SIZE=0", STRICT, null_p(size(0))),
        // Source routes are accepted and stripped (RFC 5321 §4.1.2, §C).
        ("MAIL FROM:<@hosta.int,@jkl.org:userc@d.bar.org>", STRICT, mail("userc@d.bar.org")),
        ("MAIL FROM:<@a:u@b>", STRICT, mail("u@b")),
        ("MAIL FROM:<@[192.0.2.1]:u@b>", STRICT, mail("u@b")),
        ("MAIL FROM:<@a,b:u@d>", STRICT, Err(BadSender)),
        ("MAIL FROM:<@:u@d>", STRICT, Err(BadSender)),
        ("MAIL FROM:<@a:u@d", STRICT, Err(BadSender)),
        ("MAIL FROM:<@a,@b>", STRICT, Err(BadSender)),
        // Quoted local parts.
        ("MAIL FROM:<\"John..Doe\"@example.com>", STRICT, mail("\"John..Doe\"@example.com")),
        ("MAIL FROM:<\"john doe\"@example.com>", STRICT, mail("\"john doe\"@example.com")),
        ("MAIL FROM:<\"a\\\"b\\\\c\"@example.com>", STRICT, mail("\"a\\\"b\\\\c\"@example.com")),
        ("MAIL FROM:<\"\"@example.com>", STRICT, mail("\"\"@example.com")),
        ("MAIL FROM:<\"a@b\"@example.com>", STRICT, mail("\"a@b\"@example.com")),
        ("MAIL FROM:<\"a> b\"@example.com> SIZE=1", STRICT, mail_p("\"a> b\"@example.com", size(1))),
        ("MAIL FROM:<\"a\\ b\"@example.com>", STRICT, mail("\"a\\ b\"@example.com")),
        ("MAIL FROM:<\"a\"b@example.com>", STRICT, Err(BadSender)),
        ("MAIL FROM:<\"abc@example.com>", STRICT, Err(BadSender)),
        ("MAIL FROM:<\"a\\\"@example.com>", STRICT, Err(BadSender)),
        ("MAIL FROM:<\"a\tb\"@example.com>", STRICT, Err(BadSender)),
        // Address literals (RFC 5321 §4.1.3).
        ("MAIL FROM:<user@[192.0.2.1]>", STRICT, mail("user@[192.0.2.1]")),
        ("MAIL FROM:<user@[0.0.0.0]>", STRICT, mail("user@[0.0.0.0]")),
        ("MAIL FROM:<user@[255.255.255.255]>", STRICT, mail("user@[255.255.255.255]")),
        ("MAIL FROM:<user@[001.02.3.4]>", STRICT, mail("user@[001.02.3.4]")),
        ("MAIL FROM:<user@[IPv6:2001:db8::1]>", STRICT, mail("user@[IPv6:2001:db8::1]")),
        ("MAIL FROM:<user@[ipv6:::1]>", STRICT, mail("user@[ipv6:::1]")),
        ("MAIL FROM:<user@[IPv6:2001:db8:0:0:0:0:0:1]>", STRICT, mail("user@[IPv6:2001:db8:0:0:0:0:0:1]")),
        ("MAIL FROM:<user@[IPv6:::ffff:192.0.2.1]>", STRICT, mail("user@[IPv6:::ffff:192.0.2.1]")),
        ("MAIL FROM:<user@[x-tag:some-content]>", STRICT, mail("user@[x-tag:some-content]")),
        ("MAIL FROM:<user@[256.1.1.1]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[1.2.3]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[1.2.3.4.5]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[1234.1.1.1]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[192.0.2.1>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[IPv6:2001:db8::g]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[IPv6:1.2.3.4]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[IPv6:1:2:3:4:5:6:7:8:9]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[IPv6:fe80::1%eth0]>", STRICT, Err(BadSender)),
        // A bare IPv6 address reads as a General-address-literal with tag "2001".
        ("MAIL FROM:<user@[2001:db8::1]>", STRICT, mail("user@[2001:db8::1]")),
        ("MAIL FROM:<user@[2001:db8::[1]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[tag-:x]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[tag:]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[tag:a[b]>", STRICT, Err(BadSender)),
        ("MAIL FROM:<user@[tag:a b]>", STRICT, Err(BadSender)),
        // Bad domains and local parts.
        ("MAIL FROM:<a@b.c.>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@.b.c>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@-b.c>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@b-.c>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@b_c.d>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@b..c>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@>", STRICT, Err(BadSender)),
        ("MAIL FROM:<@b>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a>", STRICT, Err(BadSender)),
        ("MAIL FROM:<postmaster>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@b@c>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a b@c>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a(comment)@c>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@b", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@b>>", STRICT, Err(BadSender)),
        ("MAIL FROM:<<a@b>>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@b>SIZE=1", STRICT, Err(BadSender)),
        ("MAIL FROM:<>x", STRICT, Err(BadSender)),
        ("MAIL FROM:a@b", STRICT, Err(BadSender)),
        ("MAIL FROM:", STRICT, Err(BadSender)),
        ("MAIL FROM: <a@b>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a.@b>", STRICT, Err(BadSender)),
        ("MAIL FROM:<.a@b>", STRICT, Err(BadSender)),
        ("MAIL FROM:<a..b@c>", STRICT, Err(BadSender)),
        ("MAIL FROM:<.@c>", STRICT, Err(BadSender)),
        // Length limits (RFC 5321 §4.5.3.1).
        (leak(format!("MAIL FROM:<{local64}@x>")), STRICT, mail(leak(format!("{local64}@x")))),
        (leak(format!("MAIL FROM:<{local65}@x>")), STRICT, Err(BadSender)),
        (leak(format!("MAIL FROM:<a@{label63}>")), STRICT, mail(leak(format!("a@{label63}")))),
        (leak(format!("MAIL FROM:<a@{label64}>")), STRICT, Err(BadSender)),
        (leak(format!("MAIL FROM:<{path256}>")), STRICT, mail(path256)),
        (leak(format!("MAIL FROM:<{path257}>")), STRICT, Err(BadSender)),
        (leak(format!("RCPT TO:<{path257}>")), STRICT, Err(BadRecipient)),
        // Verb and keyword syntax.
        ("MAIL", STRICT, Err(Syntax)),
        ("MAIL FROM", STRICT, Err(Syntax)),
        ("MAIL FROM<a@b>", STRICT, Err(Syntax)),
        ("MAIL TO:<a@b>", STRICT, Err(Syntax)),
        ("MAIL  FROM:<a@b>", STRICT, Err(Syntax)),
        ("MAIL FROM :<a@b>", STRICT, Err(Syntax)),
        ("MAILFROM:<a@b>", STRICT, Err(UnknownCommand)),
        ("MAILX FROM:<a@b>", STRICT, Err(UnknownCommand)),
        // ---- MAIL parameters ----
        // RFC 1870 SIZE.
        ("MAIL FROM:<userx@y.foo.org> SIZE=1000000", STRICT, mail_p("userx@y.foo.org", size(1_000_000))),
        ("MAIL FROM:<a@b> size=5", STRICT, mail_p("a@b", size(5))),
        ("MAIL FROM:<a@b> SIZE=007", STRICT, mail_p("a@b", size(7))),
        ("MAIL FROM:<a@b> SIZE=18446744073709551615", STRICT, mail_p("a@b", size(u64::MAX))),
        // Past u64 but within SIZE's 20 digits: too big for anyone, not
        // bad syntax (the session answers 552 5.3.4; issue 12 item 26).
        ("MAIL FROM:<a@b> SIZE=18446744073709551616", STRICT, mail_p("a@b", size(u64::MAX))),
        ("MAIL FROM:<a@b> SIZE=99999999999999999999", STRICT, mail_p("a@b", size(u64::MAX))),
        ("MAIL FROM:<a@b> SIZE=000000000000000000001", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> SIZE=", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> SIZE", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> SIZE=abc", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> SIZE=-1", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> SIZE=+1", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> SIZE==1", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> SIZE=1 SIZE=2", STRICT, Err(UnknownParameter)),
        // RFC 6152 BODY=8BITMIME, RFC 3030 BODY=BINARYMIME.
        ("MAIL FROM:<userx@y.foo.org> BODY=8BITMIME", STRICT, mail_p("userx@y.foo.org", body(BodyType::EightBitMime))),
        ("MAIL FROM:<Sam@Random.com> BODY=BINARYMIME", STRICT, mail_p("Sam@Random.com", body(BodyType::BinaryMime))),
        ("MAIL FROM:<a@b> body=8bitmime", STRICT, mail_p("a@b", body(BodyType::EightBitMime))),
        ("MAIL FROM:<a@b> BODY=7bit", STRICT, mail_p("a@b", body(BodyType::SevenBit))),
        ("MAIL FROM:<a@b> BODY=9BIT", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> BODY=", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> BODY", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> BODY=7BIT BODY=7BIT", STRICT, Err(UnknownParameter)),
        // RFC 3461 RET and ENVID.
        (
            "MAIL FROM:<Alice@Example.ORG> RET=HDRS ENVID=QQ314159",
            STRICT,
            mail_p(
                "Alice@Example.ORG",
                MailParams {
                    ret: Some(Ret::Hdrs),
                    envid: Some("QQ314159"),
                    ..MailParams::default()
                },
            ),
        ),
        (
            "MAIL FROM:<a@b> ret=full envid=a+2Bb+3Dc",
            STRICT,
            mail_p(
                "a@b",
                MailParams {
                    ret: Some(Ret::Full),
                    envid: Some("a+2Bb+3Dc"),
                    ..MailParams::default()
                },
            ),
        ),
        ("MAIL FROM:<a@b> RET=ALL", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> RET", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> RET=FULL RET=HDRS", STRICT, Err(UnknownParameter)),
        ("MAIL FROM:<a@b> ENVID=a+2", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> ENVID=a+2b", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> ENVID=a+", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> ENVID=a=b", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> ENVID=é", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> ENVID=", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> ENVID=x ENVID=y", STRICT, Err(UnknownParameter)),
        (
            leak(format!("MAIL FROM:<a@b> ENVID={envid100}")),
            STRICT,
            mail_p(
                "a@b",
                MailParams {
                    envid: Some(envid100),
                    ..MailParams::default()
                },
            ),
        ),
        (leak(format!("MAIL FROM:<a@b> ENVID={envid101}")), STRICT, Err(BadParameterValue)),
        // RFC 4954 AUTH.
        (
            "MAIL FROM:<e=mc2@example.com> AUTH=e+3Dmc2@example.com",
            STRICT,
            mail_p(
                "e=mc2@example.com",
                MailParams {
                    auth: Some("e+3Dmc2@example.com"),
                    ..MailParams::default()
                },
            ),
        ),
        (
            "MAIL FROM:<a@b> AUTH=<>",
            STRICT,
            mail_p(
                "a@b",
                MailParams {
                    auth: Some("<>"),
                    ..MailParams::default()
                },
            ),
        ),
        ("MAIL FROM:<a@b> AUTH=", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> AUTH=a=b", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> AUTH=<> AUTH=<>", STRICT, Err(UnknownParameter)),
        // RFC 8689 REQUIRETLS.
        (
            "MAIL FROM:<a@b> REQUIRETLS",
            STRICT,
            mail_p(
                "a@b",
                MailParams {
                    requiretls: true,
                    ..MailParams::default()
                },
            ),
        ),
        ("MAIL FROM:<a@b> REQUIRETLS=yes", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> REQUIRETLS REQUIRETLS", STRICT, Err(UnknownParameter)),
        // RFC 6531 SMTPUTF8.
        ("MAIL FROM:<a@b> SMTPUTF8", STRICT, mail_p("a@b", utf8())),
        ("MAIL FROM:<a@b> smtputf8", STRICT, mail_p("a@b", utf8())),
        ("MAIL FROM:<用户@例子.广告> SMTPUTF8", STRICT, mail_p("用户@例子.广告", utf8())),
        ("MAIL FROM:<jörg@example.com> SMTPUTF8", STRICT, mail_p("jörg@example.com", utf8())),
        ("MAIL FROM:<user@bücher.example> SMTPUTF8", STRICT, mail_p("user@bücher.example", utf8())),
        ("MAIL FROM:<\"jö rg\"@example.com> SMTPUTF8", STRICT, mail_p("\"jö rg\"@example.com", utf8())),
        ("MAIL FROM:<@bücher.example:a@b> SMTPUTF8", STRICT, mail_p("a@b", utf8())),
        ("MAIL FROM:<> SMTPUTF8", STRICT, null_p(utf8())),
        ("MAIL FROM:<jörg@example.com>", STRICT, Err(Utf8NotPermitted)),
        ("MAIL FROM:<user@bücher.example>", STRICT, Err(Utf8NotPermitted)),
        ("MAIL FROM:<用户@例子.广告> SIZE=10", STRICT, Err(Utf8NotPermitted)),
        ("MAIL FROM:<@bücher.example:a@b>", STRICT, Err(Utf8NotPermitted)),
        ("MAIL FROM:<jörg@example.com>", UTF8, Err(Utf8NotPermitted)),
        ("MAIL FROM:<jö rg@example.com> SMTPUTF8", STRICT, Err(BadSender)),
        ("MAIL FROM:<a@b> SMTPUTF8=yes", STRICT, Err(BadParameterValue)),
        ("MAIL FROM:<a@b> SMTPUTF8 SMTPUTF8", STRICT, Err(UnknownParameter)),
        // Several parameters, any order, several spaces.
        (
            "MAIL FROM:<a@b> SIZE=1 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID=x REQUIRETLS AUTH=<>",
            STRICT,
            mail_p(
                "a@b",
                MailParams {
                    size: Some(1),
                    body: Some(BodyType::EightBitMime),
                    smtputf8: true,
                    ret: Some(Ret::Full),
                    envid: Some("x"),
                    auth: Some("<>"),
                    requiretls: true,
                },
            ),
        ),
        (
            "MAIL FROM:<someone.long@example.com> SIZE=12345 BODY=8BITMIME",
            STRICT,
            mail_p(
                "someone.long@example.com",
                MailParams {
                    size: Some(12345),
                    body: Some(BodyType::EightBitMime),
                    ..MailParams::default()
                },
            ),
        ),
        (
            "MAIL FROM:<a@b>    SIZE=1     BODY=8BITMIME   ",
            STRICT,
            mail_p(
                "a@b",
                MailParams {
                    size: Some(1),
                    body: Some(BodyType::EightBitMime),
                    ..MailParams::default()
                },
            ),
        ),
        ("MAIL FROM:<a@b> FOO=bar", STRICT, Err(UnknownParameter)),
        ("MAIL FROM:<a@b> X-FOO", STRICT, Err(UnknownParameter)),
        ("MAIL FROM:<a@b> NOTIFY=NEVER", STRICT, Err(UnknownParameter)),
        ("MAIL FROM:<a@b> SIZE=1 FOO", STRICT, Err(UnknownParameter)),
        ("MAIL FROM:<a@b> =x", STRICT, Err(Syntax)),
        ("MAIL FROM:<a@b> -X", STRICT, Err(Syntax)),
        ("MAIL FROM:<a@b> SI_ZE=1", STRICT, Err(Syntax)),
        // The path is checked before the parameters.
        ("MAIL FROM:<a@> FOO", STRICT, Err(BadSender)),
        // ---- Lenient mode ----
        ("MAIL FROM: <a@b>", LENIENT, mail("a@b")),
        ("MAIL FROM:   <a@b> SIZE=1", LENIENT, mail_p("a@b", size(1))),
        ("MAIL  FROM:<a@b>", LENIENT, mail("a@b")),
        ("MAIL FROM:a@b", LENIENT, mail("a@b")),
        ("MAIL FROM:a@b SIZE=10", LENIENT, mail_p("a@b", size(10))),
        ("MAIL FROM: a@b", LENIENT, mail("a@b")),
        ("MAIL FROM:<local.@domain>", LENIENT, mail("local.@domain")),
        ("MAIL FROM:<.a@d>", LENIENT, mail(".a@d")),
        ("MAIL FROM:<a..b@d>", LENIENT, mail("a..b@d")),
        ("MAIL FROM:a..b@d", LENIENT, mail("a..b@d")),
        ("MAIL FROM:<>", LENIENT, null_p(MailParams::default())),
        ("MAIL FROM: <>", LENIENT, null_p(MailParams::default())),
        ("MAIL FROM:<.@d>", LENIENT, Err(BadSender)),
        ("MAIL FROM:<a@b", LENIENT, Err(BadSender)),
        ("MAIL FROM:a@b>", LENIENT, Err(BadSender)),
        ("MAIL FROM:", LENIENT, Err(BadSender)),
        ("MAIL FROM:   ", LENIENT, Err(BadSender)),
        ("MAIL FROM:<a@b..c>", LENIENT, Err(BadSender)),
        ("MAIL FROM:jörg@b", LENIENT, Err(Utf8NotPermitted)),
        ("MAIL FROM:jörg@b SMTPUTF8", LENIENT, mail_p("jörg@b", utf8())),
        // ---- RCPT (RFC 5321 §4.1.1.3) ----
        ("RCPT TO:<Jones@foo.com>", STRICT, rcpt("Jones@foo.com")),
        ("rcpt to:<Jones@foo.com>", STRICT, rcpt("Jones@foo.com")),
        ("Rcpt To:<Green@foo.com>", STRICT, rcpt("Green@foo.com")),
        ("RCPT TO:<@hosta.int,@jkl.org:userc@d.bar.org>", STRICT, rcpt("userc@d.bar.org")),
        ("RCPT TO:<user@[192.0.2.1]>", STRICT, rcpt("user@[192.0.2.1]")),
        ("RCPT TO:<user@[IPv6:2001:db8::1]>", STRICT, rcpt("user@[IPv6:2001:db8::1]")),
        ("RCPT TO:<\"John..Doe\"@example.com>", STRICT, rcpt("\"John..Doe\"@example.com")),
        ("RCPT TO:<Postmaster>", STRICT, postmaster(RcptParams::default())),
        ("RCPT TO:<postmaster>", STRICT, postmaster(RcptParams::default())),
        ("RCPT TO:<POSTMASTER>   ", STRICT, postmaster(RcptParams::default())),
        ("RCPT TO:<Postmaster> NOTIFY=NEVER", STRICT, postmaster(notify(true, false, false, false))),
        ("RCPT TO:<postmaster@example.com>", STRICT, rcpt("postmaster@example.com")),
        ("RCPT TO:<Postmaster@>", STRICT, Err(BadRecipient)),
        ("RCPT TO:<Postmaster>x", STRICT, Err(BadRecipient)),
        ("RCPT TO:<Postmasters>", STRICT, Err(BadRecipient)),
        ("RCPT TO:Postmaster", STRICT, Err(BadRecipient)),
        ("RCPT TO:Postmaster", LENIENT, postmaster(RcptParams::default())),
        ("RCPT TO: <Postmaster>", LENIENT, postmaster(RcptParams::default())),
        ("RCPT TO:<>", STRICT, Err(BadRecipient)),
        ("RCPT TO:<a@b", STRICT, Err(BadRecipient)),
        ("RCPT TO:a@b", STRICT, Err(BadRecipient)),
        ("RCPT TO: <a@b>", STRICT, Err(BadRecipient)),
        ("RCPT TO:", STRICT, Err(BadRecipient)),
        ("RCPT TO:<a.@b>", STRICT, Err(BadRecipient)),
        ("RCPT TO:<a@b_c>", STRICT, Err(BadRecipient)),
        ("RCPT TO:<a@b>x", STRICT, Err(BadRecipient)),
        ("RCPT", STRICT, Err(Syntax)),
        ("RCPT TO", STRICT, Err(Syntax)),
        ("RCPT FROM:<a@b>", STRICT, Err(Syntax)),
        ("RCPT TO <a@b>", STRICT, Err(Syntax)),
        ("RCPTTO:<a@b>", STRICT, Err(UnknownCommand)),
        // RFC 6531 in RCPT: decided by the options.
        ("RCPT TO:<jörg@example.com>", STRICT, Err(Utf8NotPermitted)),
        ("RCPT TO:<jörg@example.com>", UTF8, rcpt("jörg@example.com")),
        ("RCPT TO:<θσερ@εχαμπλε.ψομ>", UTF8, rcpt("θσερ@εχαμπλε.ψομ")),
        ("RCPT TO:<\"我 的\"@例子.广告>", UTF8, rcpt("\"我 的\"@例子.广告")),
        ("RCPT TO:<jörg@example.com> SMTPUTF8", UTF8, Err(UnknownParameter)),
        // Lenient RCPT.
        ("RCPT TO: <a@b>", LENIENT, rcpt("a@b")),
        ("RCPT TO:a@b NOTIFY=NEVER", LENIENT, rcpt_p("a@b", notify(true, false, false, false))),
        ("RCPT TO:<a.@b>", LENIENT, rcpt("a.@b")),
        // ---- RCPT parameters (RFC 3461) ----
        (
            "RCPT TO:<Bob@Example.COM> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob@Example.COM",
            STRICT,
            rcpt_p(
                "Bob@Example.COM",
                RcptParams {
                    orcpt: Some("rfc822;Bob@Example.COM"),
                    ..notify(false, true, true, false)
                },
            ),
        ),
        (
            "RCPT TO:<Carol@Ivory.EDU> NOTIFY=FAILURE ORCPT=rfc822;Carol@Ivory.EDU",
            STRICT,
            rcpt_p(
                "Carol@Ivory.EDU",
                RcptParams {
                    orcpt: Some("rfc822;Carol@Ivory.EDU"),
                    ..notify(false, false, true, false)
                },
            ),
        ),
        ("RCPT TO:<Dana@Ivory.EDU> NOTIFY=SUCCESS,FAILURE", STRICT, rcpt_p("Dana@Ivory.EDU", notify(false, true, true, false))),
        ("RCPT TO:<a@b> NOTIFY=never", STRICT, rcpt_p("a@b", notify(true, false, false, false))),
        ("RCPT TO:<a@b> notify=delay,Success,FAILURE", STRICT, rcpt_p("a@b", notify(false, true, true, true))),
        ("RCPT TO:<a@b> NOTIFY=DELAY", STRICT, rcpt_p("a@b", notify(false, false, false, true))),
        ("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> NOTIFY=DELAY,NEVER", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> NOTIFY=", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> NOTIFY", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> NOTIFY=SUCCESS,", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> NOTIFY=,SUCCESS", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> NOTIFY=SOMETIMES", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> NOTIFY=SUCCESS NOTIFY=DELAY", STRICT, Err(UnknownParameter)),
        (
            "RCPT TO:<a@b> ORCPT=rfc822;a+2Bb@c",
            STRICT,
            rcpt_p(
                "a@b",
                RcptParams {
                    notify: None,
                    orcpt: Some("rfc822;a+2Bb@c"),
                },
            ),
        ),
        (
            "RCPT TO:<a@b> orcpt=utf-8;a@b",
            STRICT,
            rcpt_p(
                "a@b",
                RcptParams {
                    notify: None,
                    orcpt: Some("utf-8;a@b"),
                },
            ),
        ),
        // RFC 6533: raw UTF-8 in a utf-8 ORCPT once SMTPUTF8 is in effect.
        (
            "RCPT TO:<jörg@example.com> ORCPT=utf-8;jörg@example.com",
            UTF8,
            rcpt_p(
                "jörg@example.com",
                RcptParams {
                    notify: None,
                    orcpt: Some("utf-8;jörg@example.com"),
                },
            ),
        ),
        ("RCPT TO:<a@b> ORCPT=utf-8;jörg@example.com", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> ORCPT=rfc822;jörg@example.com", UTF8, Err(BadParameterValue)),
        ("RCPT TO:<a@b> ORCPT=rfc822", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> ORCPT=;a@b", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> ORCPT=rfc822;", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> ORCPT=rfc822;a+2", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> ORCPT=rfc(822);a", STRICT, Err(BadParameterValue)),
        ("RCPT TO:<a@b> ORCPT=rfc822;a ORCPT=rfc822;b", STRICT, Err(UnknownParameter)),
        ("RCPT TO:<a@b> SIZE=1", STRICT, Err(UnknownParameter)),
        ("RCPT TO:<a@b> FOO", STRICT, Err(UnknownParameter)),
        ("RCPT TO:<a@b> =", STRICT, Err(Syntax)),
        // ---- DATA / RSET / QUIT / STARTTLS / NOOP ----
        ("DATA", STRICT, Ok(Command::Data)),
        ("data", STRICT, Ok(Command::Data)),
        ("DATA   ", STRICT, Ok(Command::Data)),
        ("DATA x", STRICT, Err(Syntax)),
        ("DATAX", STRICT, Err(UnknownCommand)),
        ("RSET", STRICT, Ok(Command::Rset)),
        ("RSET now", STRICT, Err(Syntax)),
        ("QUIT", STRICT, Ok(Command::Quit)),
        ("quit \t", STRICT, Ok(Command::Quit)),
        ("QUIT now", STRICT, Err(Syntax)),
        ("STARTTLS", STRICT, Ok(Command::StartTls)),
        ("StartTLS", STRICT, Ok(Command::StartTls)),
        ("STARTTLS x", STRICT, Err(Syntax)),
        ("STARTTLSX", STRICT, Err(UnknownCommand)),
        ("STARTTL", STRICT, Err(UnknownCommand)),
        ("NOOP", STRICT, Ok(Command::Noop)),
        ("noop anything at all \u{1}", STRICT, Ok(Command::Noop)),
        // ---- HELP / VRFY / EXPN ----
        ("HELP", STRICT, Ok(Command::Help { topic: None })),
        ("HELP   ", STRICT, Ok(Command::Help { topic: None })),
        (
            "HELP MAIL",
            STRICT,
            Ok(Command::Help {
                topic: Some("MAIL"),
            }),
        ),
        (
            "help  topic here  ",
            STRICT,
            Ok(Command::Help {
                topic: Some("topic here"),
            }),
        ),
        ("HELP a\u{1}b", STRICT, Err(Syntax)),
        ("VRFY Smith", STRICT, Ok(Command::Vrfy { arg: "Smith" })),
        (
            "VRFY  <Smith@bar.com>  ",
            STRICT,
            Ok(Command::Vrfy {
                arg: "<Smith@bar.com>",
            }),
        ),
        ("vrfy John Smith", STRICT, Ok(Command::Vrfy { arg: "John Smith" })),
        ("VRFY", STRICT, Err(Syntax)),
        ("VRFY    ", STRICT, Err(Syntax)),
        ("VRFY a\u{0}b", STRICT, Err(Syntax)),
        (
            "EXPN Example-People",
            STRICT,
            Ok(Command::Expn {
                arg: "Example-People",
            }),
        ),
        ("EXPN", STRICT, Err(Syntax)),
        // ---- BDAT (RFC 3030) ----
        ("BDAT 86 LAST", STRICT, bdat(86, true)),
        ("BDAT 100000", STRICT, bdat(100_000, false)),
        ("bdat 0 last", STRICT, bdat(0, true)),
        ("BDAT 1000 Last", STRICT, bdat(1000, true)),
        ("BDAT  100   LAST  ", STRICT, bdat(100, true)),
        ("BDAT 18446744073709551615", STRICT, bdat(u64::MAX, false)),
        ("BDAT 18446744073709551616", STRICT, Err(Syntax)),
        ("BDAT 000000000000000000001", STRICT, Err(Syntax)),
        ("BDAT", STRICT, Err(Syntax)),
        ("BDAT x", STRICT, Err(Syntax)),
        ("BDAT -1", STRICT, Err(Syntax)),
        ("BDAT 10 FIRST", STRICT, Err(Syntax)),
        ("BDAT 10 LAST x", STRICT, Err(Syntax)),
        ("BDAT 10 LASTX", STRICT, Err(Syntax)),
        ("BDAT 10LAST", STRICT, Err(Syntax)),
        ("BDAT LAST", STRICT, Err(Syntax)),
        // ---- AUTH (RFC 4954) ----
        ("AUTH PLAIN", STRICT, auth("PLAIN", None)),
        ("AUTH PLAIN dGVzdAB0ZXN0ADEyMzQ=", STRICT, auth("PLAIN", Some("dGVzdAB0ZXN0ADEyMzQ="))),
        ("AUTH PLAIN =", STRICT, auth("PLAIN", Some("="))),
        ("auth cram-md5", STRICT, auth("cram-md5", None)),
        ("AUTH SCRAM-SHA-256-PLUS", STRICT, auth("SCRAM-SHA-256-PLUS", None)),
        ("AUTH X_OAUTH2 a+b/c==", STRICT, auth("X_OAUTH2", Some("a+b/c=="))),
        ("AUTH  LOGIN   dXNlcg==  ", STRICT, auth("LOGIN", Some("dXNlcg=="))),
        ("AUTH ABCDEFGHIJKLMNOPQRST", STRICT, auth("ABCDEFGHIJKLMNOPQRST", None)),
        ("AUTH ABCDEFGHIJKLMNOPQRSTU", STRICT, Err(Syntax)),
        ("AUTH", STRICT, Err(Syntax)),
        ("AUTH PLAIN a b", STRICT, Err(Syntax)),
        ("AUTH PLAIN ab!c", STRICT, Err(Syntax)),
        ("AUTH PL@IN", STRICT, Err(Syntax)),
        ("AUTH PLÄIN", STRICT, Err(Syntax)),
        // ---- Unknown commands ----
        ("", STRICT, Err(UnknownCommand)),
        ("   ", STRICT, Err(UnknownCommand)),
        (" MAIL FROM:<a@b>", STRICT, Err(UnknownCommand)),
        ("FOO", STRICT, Err(UnknownCommand)),
        ("TURN", STRICT, Err(UnknownCommand)),
        ("ETRN example.com", STRICT, Err(UnknownCommand)),
        ("MAIL\tFROM:<a@b>", STRICT, Err(UnknownCommand)),
        ("ÉHLO x", STRICT, Err(UnknownCommand)),
        ("HEL0 x", STRICT, Err(UnknownCommand)),
        ("H\u{0}LO x", STRICT, Err(UnknownCommand)),
    ]
}

#[test]
fn table() {
    let mut failures = Vec::new();
    let cases = cases();
    for (line, opts, expected) in &cases {
        let got = parse_command(line.as_bytes(), *opts);
        if got != *expected {
            failures.push(format!(
                "{line:?} {opts:?}\n    expected {expected:?}\n    got      {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn table_covers_every_verb_and_error() {
    let cases = cases();
    let errors = [
        UnknownCommand,
        Syntax,
        BadSender,
        BadRecipient,
        UnknownParameter,
        BadParameterValue,
        Utf8NotPermitted,
    ];
    for e in errors {
        assert!(
            cases.iter().any(|(_, _, r)| *r == Err(e)),
            "no case expects {e:?}"
        );
    }
    let verbs = [
        "HELO", "EHLO", "LHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "NOOP", "QUIT", "VRFY",
        "EXPN", "HELP", "STARTTLS", "AUTH",
    ];
    for v in verbs {
        assert!(
            cases
                .iter()
                .any(|(_, _, r)| r.as_ref().is_ok_and(|c| c.verb() == v)),
            "no case parses {v}"
        );
    }
}

#[test]
fn invalid_utf8() {
    let cases: &[(&[u8], Expected)] = &[
        (b"MAIL FROM:<\xff@b>", Err(Syntax)),
        (b"MAIL FROM:<a@b> ENVID=\xc3", Err(Syntax)),
        (b"RCPT TO:<\xe4@b>", Err(Syntax)),
        (b"EHLO \xff", Err(Syntax)),
        (b"NOOP \xff", Err(Syntax)),
        (b"VRFY \xc0\x80", Err(Syntax)),
        (b"\xffMAIL FROM:<a@b>", Err(UnknownCommand)),
        (b"\xff\xfe", Err(UnknownCommand)),
        (b"MA\xffL FROM:<a@b>", Err(UnknownCommand)),
    ];
    for (line, expected) in cases {
        assert_eq!(parse_command(line, STRICT), *expected, "{line:?}");
        assert_eq!(parse_command(line, LENIENT), *expected, "{line:?}");
    }
}

#[test]
fn results_borrow_from_the_line() {
    let line = b"MAIL FROM:<@r.example:user@example.com> ENVID=abc AUTH=<>".to_vec();
    let range = line.as_ptr_range();
    let inside = |s: &str| {
        let r = s.as_bytes().as_ptr_range();
        range.start <= r.start && r.end <= range.end
    };
    let Ok(Command::Mail {
        from: ReversePath::Mailbox(m),
        params,
    }) = parse_command(&line, STRICT)
    else {
        panic!("MAIL did not parse");
    };
    assert!(inside(m.raw) && inside(m.local_part) && inside(m.domain));
    assert!(inside(params.envid.expect("envid")));
    assert!(inside(params.auth.expect("auth")));
    assert!(!m.is_address_literal());
    assert!(!m.is_utf8());
}

#[test]
fn mailbox_helpers() {
    let m = parse_mailbox("user@[IPv6:::1]", false, false).expect("literal");
    assert!(m.is_address_literal());
    assert_eq!(m.local_part, "user");
    let m = parse_mailbox("jörg@example.com", true, false).expect("utf8");
    assert!(m.is_utf8());
}

#[test]
fn parse_mailbox_cases() {
    let ok: &[(&str, bool, bool, &str, &str)] = &[
        ("Smith@bar.com", false, false, "Smith", "bar.com"),
        ("\"a b\"@c", false, false, "\"a b\"", "c"),
        ("\"a@b\"@c", false, false, "\"a@b\"", "c"),
        ("u@[192.0.2.1]", false, false, "u", "[192.0.2.1]"),
        (
            "u@[IPv6:2001:db8::1]",
            false,
            false,
            "u",
            "[IPv6:2001:db8::1]",
        ),
        ("jörg@bücher.example", true, false, "jörg", "bücher.example"),
        ("a..b@c", false, true, "a..b", "c"),
        ("local.@domain", true, true, "local.", "domain"),
    ];
    for &(s, utf8, lenient, local, domain) in ok {
        let m = parse_mailbox(s, utf8, lenient);
        assert_eq!(
            m,
            Some(Mailbox {
                raw: s,
                local_part: local,
                domain
            }),
            "{s:?}"
        );
    }
    let bad: &[(&str, bool, bool)] = &[
        ("", false, false),
        ("a", false, false),
        ("a@", false, false),
        ("@b", false, false),
        ("<a@b>", false, false),
        ("@r:a@b", false, false),
        (" a@b", false, false),
        ("a@b ", false, false),
        ("a@b>", false, false),
        ("a..b@c", false, false),
        ("local.@domain", false, false),
        ("jörg@example.com", false, false),
        ("jörg@example.com", false, true),
        ("a@b_c", true, true),
        ("a@[300.1.1.1]", true, true),
        ("Postmaster", true, true),
    ];
    for &(s, utf8, lenient) in bad {
        assert_eq!(parse_mailbox(s, utf8, lenient), None, "{s:?}");
    }
    let local64 = "l".repeat(64);
    assert!(parse_mailbox(&format!("{local64}@x"), false, false).is_some());
    assert!(parse_mailbox(&format!("{local64}l@x"), false, false).is_none());
    // A mailbox is at most 254 octets: 256 with its brackets.
    let dom = |n: usize| {
        let mut v = Vec::new();
        let mut left = n;
        while left > 0 {
            let len = left.min(50);
            v.push("d".repeat(len));
            left = left.saturating_sub(len + 1);
        }
        v.join(".")
    };
    assert!(parse_mailbox(&format!("{local64}@{}", dom(189)), false, false).is_some());
    assert!(parse_mailbox(&format!("{local64}@{}", dom(190)), false, false).is_none());
}

#[test]
fn xtext_decoding() {
    let cases: &[(&str, Option<&str>)] = &[
        ("", Some("")),
        ("QQ314159", Some("QQ314159")),
        ("e+3Dmc2@example.com", Some("e=mc2@example.com")),
        ("a+2Bb", Some("a+b")),
        ("+20+7E", Some(" ~")),
        ("+C3+A9", Some("é")),
        ("a+2b", None),
        ("a+2", None),
        ("a+", None),
        ("+", None),
        ("a=b", None),
        ("a b", None),
        ("é", None),
        ("a\u{7f}", None),
        ("+FF", None),
        ("+GG", None),
    ];
    for (s, expected) in cases {
        assert_eq!(decode_xtext(s).as_deref(), *expected, "{s:?}");
    }
}

// ---------------------------------------------------------------------------
// Property tests
// ---------------------------------------------------------------------------

const ATEXT_ASCII: &str = "abcxyzABCXYZ0189!#$%&'*+-/=?^_`{|}~";
const NON_ASCII: &[char] = &['é', 'ü', 'ß', 'ж', 'θ', '日', '本', '例', '🎉'];

fn atext_char() -> impl Strategy<Value = char> {
    prop_oneof![
        8 => prop::sample::select(ATEXT_ASCII.chars().collect::<Vec<_>>()),
        1 => prop::sample::select(NON_ASCII.to_vec()),
    ]
}

fn dot_string() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::collection::vec(atext_char(), 1..8), 1..4).prop_map(|atoms| {
        atoms
            .iter()
            .map(|a| a.iter().collect::<String>())
            .collect::<Vec<_>>()
            .join(".")
    })
}

fn quoted_string() -> impl Strategy<Value = String> {
    let qtext = prop_oneof![
        6 => prop::char::ranges(vec![' '..='!', '#'..='[', ']'..='~'].into())
            .prop_map(String::from),
        1 => prop::sample::select(NON_ASCII.to_vec()).prop_map(String::from),
        2 => prop::char::range(' ', '~').prop_map(|c| format!("\\{c}")),
    ];
    prop::collection::vec(qtext, 0..10).prop_map(|parts| format!("\"{}\"", parts.concat()))
}

fn label() -> impl Strategy<Value = String> {
    let letdig = || {
        prop_oneof![
            8 => prop::sample::select("abcmxyzABZ0129".chars().collect::<Vec<_>>()),
            1 => prop::sample::select(NON_ASCII.to_vec()),
        ]
    };
    let ldh = prop_oneof![4 => letdig(), 1 => Just('-')];
    (
        letdig(),
        prop::collection::vec(ldh, 0..8),
        prop::option::of(letdig()),
    )
        .prop_map(|(first, mid, last)| {
            let mut s = String::from(first);
            if let Some(last) = last {
                s.extend(mid);
                s.push(last);
            }
            s
        })
}

fn domain() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::collection::vec(label(), 1..4).prop_map(|l| l.join(".")),
        1 => any::<[u8; 4]>().prop_map(|[a, b, c, d]| format!("[{a}.{b}.{c}.{d}]")),
        1 => any::<[u16; 8]>().prop_map(|s| format!("[IPv6:{}]", Ipv6Addr::from(s))),
        1 => ("[a-z][a-z0-9-]{0,5}[a-z0-9]", "[!-Z^-~]{1,10}")
            .prop_filter("IPv6 tag", |(t, _)| !t.eq_ignore_ascii_case("ipv6"))
            .prop_map(|(t, c)| format!("[{t}:{c}]")),
    ]
}

fn mailbox() -> impl Strategy<Value = (String, String)> {
    (
        prop_oneof![3 => dot_string(), 1 => quoted_string()],
        domain(),
    )
        .prop_filter("RFC 5321 length limits", |(l, d)| {
            l.len() <= 64 && l.len() + d.len() + 3 <= 256
        })
}

/// Lines built from SMTP-ish fragments, to reach deep into the grammar.
fn smtpish_line() -> impl Strategy<Value = Vec<u8>> {
    let verb = prop::sample::select(vec![
        "MAIL FROM:",
        "RCPT TO:",
        "EHLO ",
        "HELO ",
        "BDAT ",
        "AUTH ",
        "VRFY ",
        "HELP ",
        "DATA",
        "NOOP ",
        "STARTTLS",
        "mail from: ",
        "rcpt to:",
        "",
    ]);
    let piece = prop_oneof![
        prop::sample::select(vec![
            "<",
            ">",
            "@",
            "[",
            "]",
            "\"",
            "\\",
            ":",
            ".",
            ",",
            "=",
            "+",
            " ",
            ";",
            "IPv6:",
            "SIZE=",
            "BODY=",
            "SMTPUTF8",
            "NOTIFY=",
            "ORCPT=rfc822;",
            "ENVID=",
            "AUTH=",
            "Postmaster",
            "LAST",
            "é",
            "日",
            "\u{0}",
            "\t",
            "255.",
            "999",
            "::",
            "a",
            "Z",
            "-",
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        any::<u8>().prop_map(|b| vec![b]),
    ];
    (verb, prop::collection::vec(piece, 0..40)).prop_map(|(v, pieces)| {
        let mut line = v.as_bytes().to_vec();
        for p in pieces {
            line.extend(p);
        }
        line
    })
}

/// Whatever strict mode accepts, lenient mode accepts the same way.
fn check_lenient_superset(line: &[u8]) {
    for utf8_addresses in [false, true] {
        let strict = ParseOptions {
            utf8_addresses,
            lenient: false,
        };
        let lenient = ParseOptions {
            utf8_addresses,
            lenient: true,
        };
        if let Ok(cmd) = parse_command(line, strict) {
            assert_eq!(parse_command(line, lenient), Ok(cmd), "{line:?}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn never_panics_on_bytes(line in prop::collection::vec(any::<u8>(), 0..300)) {
        check_lenient_superset(&line);
    }

    #[test]
    fn never_panics_on_smtpish_lines(line in smtpish_line()) {
        check_lenient_superset(&line);
        if let Ok(s) = std::str::from_utf8(&line) {
            let _ = parse_mailbox(s, true, true);
            let _ = parse_mailbox(s, false, false);
            let _ = decode_xtext(s);
        }
    }

    #[test]
    fn valid_mailboxes_round_trip((local, domain) in mailbox()) {
        let raw = format!("{local}@{domain}");
        let non_ascii = !raw.is_ascii();
        let line = format!("MAIL FROM:<{raw}>{}", if non_ascii { " SMTPUTF8" } else { "" });
        for opts in [STRICT, LENIENT] {
            match parse_command(line.as_bytes(), opts) {
                Ok(Command::Mail { from: ReversePath::Mailbox(m), params }) => {
                    prop_assert_eq!(m.raw, raw.as_str());
                    prop_assert_eq!(m.local_part, local.as_str());
                    prop_assert_eq!(m.domain, domain.as_str());
                    prop_assert_eq!(params.smtputf8, non_ascii);
                    prop_assert_eq!(m.is_utf8(), non_ascii);
                    prop_assert_eq!(m.is_address_literal(), domain.starts_with('['));
                }
                other => prop_assert!(false, "{:?} gave {:?}", line, other),
            }
        }
        // The same through RCPT, and with a source route in front.
        let path = format!("<@relay.example,@[192.0.2.7]:{raw}>");
        let rcpt = format!("RCPT TO:{path} NOTIFY=NEVER");
        let expected = Ok(Command::Rcpt {
            to: ForwardPath::Mailbox(Mailbox {
                raw: &raw,
                local_part: &local,
                domain: &domain,
            }),
            params: RcptParams {
                notify: Some(Notify { never: true, ..Notify::default() }),
                orcpt: None,
            },
        });
        if path.len() <= 256 {
            prop_assert_eq!(parse_command(rcpt.as_bytes(), UTF8), expected);
        } else {
            prop_assert_eq!(parse_command(rcpt.as_bytes(), UTF8), Err(BadRecipient));
        }
        prop_assert_eq!(
            parse_mailbox(&raw, true, false),
            Some(Mailbox { raw: &raw, local_part: &local, domain: &domain })
        );
        if non_ascii {
            let plain = format!("MAIL FROM:<{raw}>");
            prop_assert_eq!(parse_command(plain.as_bytes(), STRICT), Err(Utf8NotPermitted));
            let rcpt = format!("RCPT TO:<{raw}>");
            prop_assert_eq!(parse_command(rcpt.as_bytes(), STRICT), Err(Utf8NotPermitted));
            prop_assert_eq!(parse_mailbox(&raw, false, false), None);
        }
    }

    #[test]
    fn xtext_round_trips(s in "\\PC{0,30}") {
        let encoded: String = s
            .bytes()
            .map(|b| {
                if (33..=126).contains(&b) && b != b'+' && b != b'=' {
                    char::from(b).to_string()
                } else {
                    format!("+{b:02X}")
                }
            })
            .collect();
        prop_assert_eq!(decode_xtext(&encoded), Some(s));
        if !encoded.is_empty() && encoded.len() <= 100 {
            let line = format!("MAIL FROM:<> ENVID={encoded}");
            let ok = matches!(
                parse_command(line.as_bytes(), STRICT),
                Ok(Command::Mail { params: MailParams { envid: Some(e), .. }, .. }) if e == encoded
            );
            prop_assert!(ok, "{}", line);
        }
    }
}
