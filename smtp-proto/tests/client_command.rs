//! Command serialization: `parse_command(write_to(cmd)) == cmd` for every
//! command the parser produces.
#![allow(clippy::unwrap_used)]

use proptest::prelude::*;
use smtp_proto::command::{Command, ParseOptions, encode_xtext};
use smtp_proto::parse::{decode_xtext, parse_command};

/// Checks the round trip for one line, if it parses at all.
fn round_trip(line: &[u8], opts: ParseOptions) -> Result<(), TestCaseError> {
    if let Ok(cmd) = parse_command(line, opts) {
        let bytes = cmd.to_bytes();
        prop_assert!(bytes.ends_with(b"\r\n"));
        let body = &bytes[..bytes.len() - 2];
        prop_assert!(!body.contains(&b'\n') && !body.contains(&b'\r'));
        let again = parse_command(body, opts);
        prop_assert_eq!(
            again.clone(),
            Ok(cmd.clone()),
            "{:?}",
            String::from_utf8_lossy(&bytes)
        );
        // Canonical: serializing again gives the same bytes.
        prop_assert_eq!(again.unwrap().to_bytes(), bytes);
    }
    Ok(())
}

fn pick(list: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(list).prop_map(str::to_owned)
}

fn mailbox() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => pick(&[
            "a@b.example",
            "first.last@example.com",
            "\"john doe\"@example.com",
            "\"q\\\"x\"@[192.0.2.1]",
            "x@[IPv6:2001:db8::1]",
            "x@[tag:stuff]",
            "jörg@bücher.example",
            "用户@例子.广告",
            "a.@b.example",
            ".a@b",
            "a..b@c",
            "@r.example:a@b.example",
            "@r1,@[1.2.3.4]:a@b",
            "Postmaster",
            "postmaster",
            "Postmaster@example.com",
            "",
        ]),
        3 => (
            "[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}(\\.[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]{1,8}){0,2}",
            "[a-zA-Z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?){0,3}"
        )
            .prop_map(|(l, d)| format!("{l}@{d}")),
    ]
}

fn mail_param() -> impl Strategy<Value = String> {
    prop_oneof![
        "(?i:size)=[0-9]{1,21}".prop_map(|s| s),
        pick(&[
            "BODY=7BIT",
            "body=8bitmime",
            "BODY=BinaryMIME",
            "BODY=x",
            "BODY"
        ]),
        pick(&["SMTPUTF8", "smtputf8", "SMTPUTF8=yes"]),
        pick(&["RET=FULL", "ret=hdrs", "RET=NONE"]),
        "ENVID=[!-~]{0,20}".prop_map(|s| s),
        any::<String>().prop_map(|s| format!("ENVID={}", encode_xtext(&s))),
        pick(&["AUTH=<>", "AUTH=a+2Bb@c", "AUTH="]),
        pick(&["REQUIRETLS", "XFOO=1", "=", "SIZE=1 SIZE=2"]),
    ]
}

fn rcpt_param() -> impl Strategy<Value = String> {
    prop_oneof![
        "(?i:notify)=((?i:never|success|failure|delay)(,(?i:success|failure|delay|never)){0,3})"
            .prop_map(|s| s),
        "ORCPT=(rfc822|utf-8|x);[!-~é]{0,20}".prop_map(|s| s),
        any::<String>().prop_map(|s| format!("ORCPT=rfc822;{}", encode_xtext(&s))),
        pick(&["NOTIFY=", "ORCPT=rfc822", "XFOO"]),
    ]
}

fn line() -> impl Strategy<Value = String> {
    let sep = prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("  ")];
    let params =
        |p: BoxedStrategy<String>| prop::collection::vec(p, 0..5).prop_map(|v| v.join(" "));
    prop_oneof![
        4 => ("(?i:mail) (?i:from):", sep.clone(), mailbox(), params(mail_param().boxed()))
            .prop_map(|(v, s, m, p)| format!("{v}{s}<{m}> {p}")),
        4 => ("(?i:rcpt) (?i:to):", sep, mailbox(), params(rcpt_param().boxed()))
            .prop_map(|(v, s, m, p)| format!("{v}{s}<{m}> {p}")),
        1 => ("(?i:mail from:|rcpt to:)", mailbox()).prop_map(|(v, m)| format!("{v}{m}")),
        1 => "(?i:helo|ehlo|lhlo) +[!-~]{1,20} *".prop_map(|s| s),
        1 => "(?i:data|rset|quit|starttls|noop|help)( +[ -~]{0,10})?".prop_map(|s| s),
        1 => "(?i:vrfy|expn|help) +[ -~]{1,20}".prop_map(|s| s),
        1 => "(?i:bdat) +[0-9]{1,21}( +(?i:last))? *".prop_map(|s| s),
        1 => "(?i:auth) +[A-Za-z0-9_-]{1,21}( +[A-Za-z0-9+/=]{1,30})?".prop_map(|s| s),
        1 => any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn serialized_commands_parse_back(line in line(), utf8: bool, lenient: bool) {
        round_trip(line.as_bytes(), ParseOptions { utf8_addresses: utf8, lenient })?;
    }

    #[test]
    fn arbitrary_bytes_round_trip(line in prop::collection::vec(any::<u8>(), 0..80)) {
        round_trip(&line, ParseOptions::default())?;
        round_trip(&line, ParseOptions { utf8_addresses: true, lenient: true })?;
    }

    #[test]
    fn xtext_round_trip(s in any::<String>()) {
        prop_assert_eq!(decode_xtext(&encode_xtext(&s)), Some(s));
    }
}

#[test]
fn canonical_forms() {
    let cases: &[(&str, &str)] = &[
        ("ehlo  client.example", "EHLO client.example"),
        (
            "mail from:<@r.example:a@b.example>   size=10 body=8bitmime",
            "MAIL FROM:<a@b.example> SIZE=10 BODY=8BITMIME",
        ),
        (
            "MAIL FROM:<> RET=hdrs ENVID=x+2By SMTPUTF8",
            "MAIL FROM:<> SMTPUTF8 RET=HDRS ENVID=x+2By",
        ),
        (
            "rcpt to:<postmaster> orcpt=rfc822;a@b notify=delay,success",
            "RCPT TO:<Postmaster> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;a@b",
        ),
        ("RCPT TO:<a@b> NOTIFY=never", "RCPT TO:<a@b> NOTIFY=NEVER"),
        ("bdat 0010 last", "BDAT 10 LAST"),
        ("noop whatever", "NOOP"),
        ("help  topic", "HELP topic"),
        ("auth plain =", "AUTH plain ="),
        ("starttls", "STARTTLS"),
    ];
    for (input, canonical) in cases {
        let cmd = parse_command(input.as_bytes(), ParseOptions::default()).unwrap();
        assert_eq!(
            String::from_utf8(cmd.to_bytes()).unwrap(),
            format!("{canonical}\r\n"),
            "{input}"
        );
        assert!(matches!(cmd, Command::Helo { .. }) || cmd.verb().len() >= 4);
    }
}
