//! XCLIENT and XFORWARD (Postfix), and the SASL requests the session hands
//! to the application: transcripts of who may send them, what
//! they change, and what a client outside the trusted networks gets.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Harness, transcript};
use smtp_proto::command::{Command, ForwardAttr, ForwardAttrs, ForwardValue, ParseOptions};
use smtp_proto::config::Config;
use smtp_proto::parse::parse_command;
use smtp_proto::server::PeerInfo;

/// Trusts the harness's client (192.0.2.1) for both commands.
fn trusting() -> Config {
    let mut c = Config::new("mx.example");
    c.extensions.help = false;
    c.forwarding.xclient_from = vec!["192.0.2.0/24".parse().unwrap()];
    c.forwarding.xforward_from = vec!["192.0.2.1".parse().unwrap()];
    c
}

fn plain() -> Config {
    let mut c = Config::new("mx.example");
    c.extensions.help = false;
    c
}

const EHLO_TRUSTED: &str = "S: 250-mx.example
S: 250-PIPELINING
S: 250-SIZE 36700160
S: 250-8BITMIME
S: 250-ENHANCEDSTATUSCODES
S: 250-SMTPUTF8
S: 250-CHUNKING
S: 250-BINARYMIME
S: 250-DSN
S: 250-LIMITS RCPTMAX=100
S: 250-XCLIENT NAME ADDR PORT PROTO HELO LOGIN DESTADDR DESTPORT
S: 250 XFORWARD NAME ADDR PORT PROTO HELO IDENT SOURCE";

#[test]
fn grammar() {
    let opts = ParseOptions::default();
    let Ok(Command::Xclient { attrs }) = parse_command(
        b"xclient NAME=mail.example ADDR=IPV6:2001:db8::1 port=25 LOGIN=[UNAVAILABLE] HELO=a+20b",
        opts,
    ) else {
        panic!("XCLIENT did not parse");
    };
    let got: Vec<_> = attrs.iter().collect();
    assert_eq!(
        got,
        vec![
            (
                ForwardAttr::Name,
                ForwardValue::Value("mail.example".into())
            ),
            (
                ForwardAttr::Addr,
                ForwardValue::Value("IPV6:2001:db8::1".into())
            ),
            (ForwardAttr::Port, ForwardValue::Value("25".into())),
            (ForwardAttr::Login, ForwardValue::Unavailable),
            (ForwardAttr::Helo, ForwardValue::Value("a b".into())),
        ]
    );
    // The canonical form parses back to the same.
    let line = Command::Xclient { attrs }.to_bytes();
    let line = &line[..line.len() - 2];
    assert_eq!(parse_command(line, opts), Ok(Command::Xclient { attrs }));
    for bad in [
        &b"XCLIENT"[..],
        b"XCLIENT ",
        b"XCLIENT NAME",
        b"XCLIENT BOGUS=1",
        b"XCLIENT IDENT=1",    // an XFORWARD attribute
        b"XFORWARD LOGIN=bob", // an XCLIENT attribute
        b"XCLIENT NAME=a+2",   // bad xtext
        b"XCLIENT NAME=a=b",
    ] {
        assert!(parse_command(bad, opts).is_err(), "{bad:?}");
    }
    let text = ForwardAttrs::encode(&[
        (ForwardAttr::Name, None),
        (ForwardAttr::Helo, Some("a b+c")),
    ]);
    assert_eq!(text, "NAME=[UNAVAILABLE] HELO=a+20b+2Bc");
    let attrs = ForwardAttrs::parse(&text, &ForwardAttr::XFORWARD).unwrap();
    assert_eq!(attrs.iter().count(), 2);
}

#[test]
fn xclient_restarts_the_session_with_the_new_facts() {
    let h = transcript(
        trusting(),
        &format!(
            "S: 220 mx.example ESMTP ready
             C: EHLO proxy.example
             {EHLO_TRUSTED}
             C: XCLIENT ADDR=198.51.100.7 PORT=4321 NAME=client.example HELO=orig.example PROTO=ESMTP LOGIN=alice DESTADDR=IPV6:2001:db8::25 DESTPORT=587
             S: 220 mx.example ESMTP ready
             C: MAIL FROM:<a@example.org>
             S: 503 5.5.1 Send HELO/EHLO first
             C: EHLO orig.example
             {EHLO_TRUSTED}"
        ),
    );
    let peer = h.s.peer();
    assert_eq!(peer.remote, Some("198.51.100.7:4321".parse().unwrap()));
    assert_eq!(peer.local, Some("[2001:db8::25]:587".parse().unwrap()));
    assert_eq!(peer.name.as_deref(), Some("client.example"));
    assert_eq!(peer.proto.as_deref(), Some("ESMTP"));
    assert_eq!(peer.proxied_by, Some("192.0.2.1:40000".parse().unwrap()));
    assert_eq!(h.s.authenticated(), Some("alice"));
    assert_eq!(h.s.helo_name(), Some("orig.example"));
    // The connect decision ran again, for the new address.
    assert_eq!(
        h.log.events.iter().filter(|e| *e == "CONNECT").count(),
        2,
        "{:?}",
        h.log.events
    );
}

#[test]
fn xclient_from_a_refused_address_gets_the_connect_refusal() {
    // The harness's application refuses 192.0.2.66 with 554: after XCLIENT
    // the new client is judged as a new connection.
    transcript(
        trusting(),
        "S: 220 mx.example ESMTP ready
         C: XCLIENT ADDR=192.0.2.66
         S: 554 5.7.1 No service for you
         C: EHLO x.example
         S: 503 5.5.1 No SMTP service here",
    );
}

#[test]
fn unavailable_values_clear_and_unsent_ones_stay() {
    let h = transcript(
        trusting(),
        "S: 220 mx.example ESMTP ready
         C: XCLIENT NAME=one.example ADDR=198.51.100.7
         S: 220 mx.example ESMTP ready
         C: XCLIENT NAME=[TEMPUNAVAIL] PORT=99
         S: 220 mx.example ESMTP ready",
    );
    let peer = h.s.peer();
    assert_eq!(peer.name, None);
    assert_eq!(peer.remote, Some("198.51.100.7:99".parse().unwrap()));
    // Trust stays with the connection's own address, so XCLIENT may come again.
    assert_eq!(peer.proxied_by, Some("192.0.2.1:40000".parse().unwrap()));
}

#[test]
fn strangers_get_550_and_nothing_changes() {
    let h = transcript(
        plain(),
        "S: 220 mx.example ESMTP ready
         C: EHLO x.example
         S: 250-mx.example
         S: 250-PIPELINING
         S: 250-SIZE 36700160
         S: 250-8BITMIME
         S: 250-ENHANCEDSTATUSCODES
         S: 250-SMTPUTF8
         S: 250-CHUNKING
         S: 250-BINARYMIME
         S: 250-DSN
         S: 250 LIMITS RCPTMAX=100
         C: XCLIENT ADDR=198.51.100.7 LOGIN=root
         S: 550 5.7.0 Error: insufficient authorization
         C: XFORWARD ADDR=198.51.100.7
         S: 550 5.7.0 Error: insufficient authorization",
    );
    assert_eq!(h.s.peer().remote, Some("192.0.2.1:40000".parse().unwrap()));
    assert_eq!(h.s.authenticated(), None);
    assert!(h.s.forwarded().is_none());
    // A client outside the networks is not trusted either.
    let mut h = Harness::with_peer(trusting(), PeerInfo::new("203.0.113.9:1".parse().unwrap()));
    h.send(b"XCLIENT ADDR=198.51.100.7\r\n");
    assert!(
        h.output()
            .ends_with("550 5.7.0 Error: insufficient authorization\r\n")
    );
    assert_eq!(h.s.peer().remote, Some("203.0.113.9:1".parse().unwrap()));
}

#[test]
fn bad_values_and_transactions_are_refused() {
    let h = transcript(
        trusting(),
        "S: 220 mx.example ESMTP ready
         C: XCLIENT ADDR=not-an-address
         S: 501 5.5.4 Bad attribute value
         C: XCLIENT PORT=70000
         S: 501 5.5.4 Bad attribute value
         C: XCLIENT PROTO=HTTP
         S: 501 5.5.4 Bad attribute value
         C: XCLIENT BOGUS=1
         S: 501 5.5.4 Syntax error in parameters or arguments
         C: XFORWARD SOURCE=MARS
         S: 501 5.5.4 Bad attribute value
         C: HELO x.example
         S: 250 mx.example
         C: MAIL FROM:<a@example.org>
         S: 250 Sender OK
         C: XCLIENT ADDR=198.51.100.7
         S: 503 Error: MAIL transaction in progress
         C: XFORWARD ADDR=198.51.100.7
         S: 503 Error: MAIL transaction in progress",
    );
    // A refused XCLIENT changed nothing, not even the attributes before the bad one.
    assert_eq!(h.s.peer().remote, Some("192.0.2.1:40000".parse().unwrap()));
}

#[test]
fn xforward_lasts_one_transaction() {
    let mut h = transcript(
        trusting(),
        "S: 220 mx.example ESMTP ready
         C: HELO filter.example
         S: 250 mx.example
         C: XFORWARD NAME=client.example ADDR=IPV6:2001:db8::7 PORT=4000
         S: 250 Ok
         C: XFORWARD HELO=orig.example PROTO=esmtp IDENT=ABC123 SOURCE=REMOTE
         S: 250 Ok
         C: MAIL FROM:<a@example.org>
         S: 250 Sender OK
         C: RCPT TO:<b@example.net>
         S: 250 Recipient OK",
    );
    let f = h.s.forwarded().unwrap().clone();
    assert_eq!(f.name.as_deref(), Some("client.example"));
    assert_eq!(f.addr, Some("2001:db8::7".parse().unwrap()));
    assert_eq!(f.port, Some(4000));
    assert_eq!(f.helo.as_deref(), Some("orig.example"));
    assert_eq!(f.proto.as_deref(), Some("ESMTP"));
    assert_eq!(f.ident.as_deref(), Some("ABC123"));
    assert_eq!(f.source.as_deref(), Some("REMOTE"));
    // The peer itself is untouched.
    assert_eq!(h.s.peer().remote, Some("192.0.2.1:40000".parse().unwrap()));
    h.send(b"DATA\r\nhi\r\n.\r\n");
    assert!(
        h.output()
            .ends_with("250 Message accepted for delivery\r\n")
    );
    assert!(
        h.s.forwarded().is_none(),
        "the next transaction starts without"
    );
    h.send(b"XFORWARD ADDR=198.51.100.1\r\nRSET\r\n");
    assert!(h.s.forwarded().is_none(), "RSET forgets it");
}

#[test]
fn the_trace_names_the_forwarded_client() {
    let mut h = Harness::new(trusting());
    h.send(b"XCLIENT ADDR=198.51.100.7 NAME=client.example\r\nEHLO orig.example\r\n");
    let text = String::from_utf8(h.s.received_header(Some("id1"), None, 0, 0)).unwrap();
    assert!(
        text.starts_with("Received: from orig.example (client.example [198.51.100.7])"),
        "{text}"
    );
    h.send(b"XFORWARD HELO=far.example NAME=[UNAVAILABLE] ADDR=203.0.113.5\r\n");
    let text = String::from_utf8(h.s.received_header(Some("id1"), None, 0, 0)).unwrap();
    assert!(
        text.starts_with("Received: from far.example (client.example [203.0.113.5])"),
        "{text}"
    );
}

/// The session hands a SASL mechanism's requests out as `Event::Sasl` and
/// feeds the answers back (CRAM-MD5: a challenge, then the verdict).
#[test]
fn sasl_requests_go_to_the_application() {
    use smtp_proto::sasl::{Mechanism, SaslAnswer, SaslRequest, encode_base64};
    use smtp_proto::server::{Decision, Event};
    use std::time::Instant;
    let mut c = plain();
    c.auth.mechanisms = vec![Mechanism::CramMd5, Mechanism::ScramSha256Plus];
    c.auth.allow_plaintext = true;
    let now = Instant::now();
    let mut s = smtp_proto::server::Session::new(
        std::sync::Arc::new(c),
        PeerInfo::new("192.0.2.1:1".parse().unwrap()),
        now,
    );
    let mut out = String::new();
    let step = |s: &mut smtp_proto::server::Session, input: &[u8]| {
        s.receive(input, now);
        while let Some(ev) = s.poll().event() {
            match ev {
                Event::Connect { ticket, .. } | Event::Helo { ticket, .. } => {
                    s.respond(ticket, Decision::Accept, now).unwrap();
                }
                Event::Sasl { ticket, request } => {
                    let answer = match request {
                        SaslRequest::CramMd5Challenge => {
                            SaslAnswer::Challenge("<1.2@mx.example>".into())
                        }
                        SaslRequest::CramMd5 {
                            username,
                            challenge,
                            ..
                        } => {
                            assert_eq!(
                                (username.as_str(), challenge.as_str()),
                                ("tim", "<1.2@mx.example>")
                            );
                            SaslAnswer::Decision(Decision::Accept)
                        }
                        other => panic!("{other:?}"),
                    };
                    s.respond_sasl(ticket, answer, now).unwrap();
                }
                other => panic!("{other:?}"),
            }
        }
        let text = String::from_utf8_lossy(s.transmit()).into_owned();
        let n = s.transmit().len();
        s.transmitted(n);
        text
    };
    out.push_str(&step(&mut s, b""));
    out.push_str(&step(&mut s, b"EHLO c\r\n"));
    // No channel binding without TLS 1.3: -PLUS is not offered.
    assert!(out.ends_with("250 AUTH CRAM-MD5\r\n"), "{out}");
    let r = step(&mut s, b"AUTH CRAM-MD5\r\n");
    assert_eq!(r, format!("334 {}\r\n", encode_base64(b"<1.2@mx.example>")));
    let r = step(
        &mut s,
        format!(
            "{}\r\n",
            encode_base64(b"tim b913a602c7eda7a495b4e6e7334d3890")
        )
        .as_bytes(),
    );
    assert_eq!(r, "235 2.7.0 Authentication successful\r\n");
    assert_eq!(s.authenticated(), Some("tim"));
}
