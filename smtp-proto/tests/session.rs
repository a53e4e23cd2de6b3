//! Whole-session transcripts: every command, extension and core error.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Harness, transcript};
use smtp_proto::config::{Config, ViolationPolicy};
use smtp_proto::sasl::Mechanism;
use smtp_proto::server::PeerInfo;

fn cfg() -> Config {
    let mut c = Config::new("mx.example");
    c.limits.max_message_size = 1_000_000;
    c
}

const EHLO: &str = "\
S: 250-mx.example
S: 250-PIPELINING
S: 250-SIZE 1000000
S: 250-8BITMIME
S: 250-ENHANCEDSTATUSCODES
S: 250-SMTPUTF8
S: 250-CHUNKING
S: 250-BINARYMIME
S: 250-DSN
S: 250-LIMITS RCPTMAX=100
S: 250 HELP";

fn with_ehlo(rest: &str) -> String {
    format!("S: 220 mx.example ESMTP ready\nC: EHLO client.example\n{EHLO}\n{rest}")
}

#[test]
fn basic_transaction() {
    let h = transcript(
        cfg(),
        &with_ehlo(
            "C: MAIL FROM:<alice@example.org>
             S: 250 2.1.0 Sender OK
             C: RCPT TO:<bob@example.net>
             S: 250 2.1.5 Recipient OK
             C: DATA
             S: 354 End data with <CR><LF>.<CR><LF>
             C: Subject: hi
             C: 
             C: ..leading dot
             C: .
             S: 250 2.0.0 Message accepted for delivery
             C: QUIT
             S: 221 2.0.0 Bye",
        ),
    );
    assert_eq!(
        h.log.messages,
        vec![b"Subject: hi\r\n\r\n.leading dot\r\n".to_vec()]
    );
    assert!(h.s.is_closed());
}

#[test]
/// RFC 2034: a HELO client saw no ENHANCEDSTATUSCODES, so gets none.
fn helo_and_verbs_case_insensitive() {
    transcript(
        cfg(),
        "S: 220 mx.example ESMTP ready
         C: helo client.example
         S: 250 mx.example
         C: mail from:<a@b.example>
         S: 250 Sender OK
         C: rcpt to:<c@d.example>
         S: 250 Recipient OK
         C: rset
         S: 250 Flushed
         C: NoOp whatever
         S: 250 OK
         C: quit
         S: 221 Bye",
    );
}

#[test]
fn sequence_errors() {
    transcript(
        cfg(),
        "S: 220 mx.example ESMTP ready
         C: MAIL FROM:<a@b.example>
         S: 503 5.5.1 Send HELO/EHLO first
         C: EHLO c
         S: 250-mx.example
         S: 250-PIPELINING
         S: 250-SIZE 1000000
         S: 250-8BITMIME
         S: 250-ENHANCEDSTATUSCODES
         S: 250-SMTPUTF8
         S: 250-CHUNKING
         S: 250-BINARYMIME
         S: 250-DSN
         S: 250-LIMITS RCPTMAX=100
         S: 250 HELP
         C: RCPT TO:<a@b.example>
         S: 503 5.5.1 Need MAIL command first
         C: DATA
         S: 503 5.5.1 Need MAIL command first
         C: MAIL FROM:<a@b.example>
         S: 250 2.1.0 Sender OK
         C: MAIL FROM:<a@b.example>
         S: 503 5.5.1 Nested MAIL command
         C: DATA
         S: 554 5.5.1 No valid recipients
         C: RCPT TO:<nobody@b.example>
         S: 550 5.1.1 Mailbox unavailable
         C: DATA
         S: 554 5.5.1 No valid recipients
         C: FOO bar
         S: 500 5.5.2 Syntax error, command unrecognized",
    );
}

#[test]
fn pipelined_replies_come_in_order() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    let out = h.exchange(
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<nobody@y.example>\r\nRCPT TO:<busy@y.example>\r\nRCPT TO:<z@y.example>\r\nDATA\r\n",
    );
    assert_eq!(
        out,
        "250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n550 5.1.1 Mailbox unavailable\r\n\
         450 4.2.1 Mailbox busy\r\n250 2.1.5 Recipient OK\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    );
    let out = h.exchange(b"x\r\n.\r\nQUIT\r\n");
    assert_eq!(
        out,
        "250 2.0.0 Message accepted for delivery\r\n221 2.0.0 Bye\r\n"
    );
}

#[test]
fn decisions_hold_later_commands() {
    // Drive by hand: while MAIL awaits its decision, nothing else is parsed.
    use smtp_proto::drive::{Instruction, Output};
    use smtp_proto::server::{Decision, Event};
    use std::sync::Arc;
    use std::time::Instant;
    let now = Instant::now();
    let mut s = smtp_proto::server::Session::new(Arc::new(cfg()), PeerInfo::default(), now);
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, now).unwrap();
    s.receive(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
        now,
    );
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, now).unwrap();
    let t = loop {
        match s.poll().event().unwrap() {
            Event::Mail { ticket, .. } => break ticket,
            Event::Violation(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert!(
        matches!(s.poll(), Output::Instruction(Instruction::AwaitingDecision)),
        "nothing parsed while a decision is open"
    );
    assert!(
        s.poll_timeout().is_none(),
        "no client timeout while we decide"
    );
    s.respond(t, Decision::Accept, now).unwrap();
    let t = loop {
        match s.poll().event().unwrap() {
            Event::Rcpt { ticket, .. } => break ticket,
            Event::Violation(_) => continue,
            other => panic!("{other:?}"),
        }
    };
    s.respond(t, Decision::Accept, now).unwrap();
    let out = String::from_utf8_lossy(s.transmit()).into_owned();
    assert!(out.ends_with("250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"));
}

#[test]
fn stale_ticket_is_misuse() {
    use smtp_proto::server::{Decision, Misuse};
    use std::sync::Arc;
    use std::time::Instant;
    let now = Instant::now();
    let mut s = smtp_proto::server::Session::new(Arc::new(cfg()), PeerInfo::default(), now);
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, now).unwrap();
    s.receive(b"EHLO c\r\n", now);
    let t1 = next_ticket(&mut s);
    s.respond(t1, Decision::Accept, now).unwrap();
    s.receive(b"VRFY x\r\n", now);
    let t2 = next_ticket(&mut s);
    let err = s
        .respond_each(t2, vec![Decision::Accept, Decision::Accept], now)
        .unwrap_err();
    assert!(matches!(err, Misuse::WrongReplyCount(_)), "{err:?}");
    let t2 = err.into_ticket().unwrap();
    s.respond(t2, Decision::Accept, now).unwrap();
}

#[test]
fn a_ticket_from_another_session_is_refused() {
    use smtp_proto::drive::{Instruction, Output};
    use smtp_proto::server::{Decision, Misuse, Session};
    use std::sync::Arc;
    use std::time::Instant;
    let now = Instant::now();
    let mut a = Session::new(Arc::new(cfg()), PeerInfo::default(), now);
    let mut b = Session::new(Arc::new(cfg()), PeerInfo::default(), now);
    // Both wait for the same decision (each one's first: the connection).
    let ta = next_ticket(&mut a);
    let tb = next_ticket(&mut b);
    let shown = format!("{ta:?}");
    // Answered on the wrong session: refused, the same ticket handed back,
    // nothing queued, the session still waiting for its own.
    let refused = |b: &mut Session, r: Result<(), Misuse>| {
        let err = r.unwrap_err();
        assert!(matches!(err, Misuse::UnknownTicket(_)), "{err:?}");
        let t = err.into_ticket().expect("the ticket handed back");
        assert_eq!(format!("{t:?}"), shown, "the same ticket handed back");
        assert!(
            b.transmit().is_empty(),
            "a reply for another session's ticket"
        );
        assert!(matches!(
            b.poll(),
            Output::Instruction(Instruction::AwaitingDecision)
        ));
        t
    };
    let r = b.respond(ta, Decision::Accept, now);
    let ta = refused(&mut b, r);
    // The same through `respond_each`.
    let r = b.respond_each(ta, vec![Decision::Accept], now);
    let ta = refused(&mut b, r);
    // Its own session still takes it, and the other its own.
    assert!(a.transmit().is_empty());
    a.respond(ta, Decision::Accept, now).unwrap();
    assert!(!a.is_waiting());
    assert!(String::from_utf8_lossy(a.transmit()).starts_with("220 "));
    b.respond(tb, Decision::Accept, now).unwrap();
    assert!(String::from_utf8_lossy(b.transmit()).starts_with("220 "));
}

#[test]
fn parameters_checked_against_extensions() {
    let mut c = cfg();
    c.extensions.dsn = false;
    c.extensions.smtputf8 = false;
    c.extensions.eightbitmime = false;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> RET=FULL\r\n"),
        "555 5.5.4 Unsupported or unadvertised MAIL/RCPT parameter\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> SMTPUTF8\r\n"),
        "555 5.5.4 Unsupported or unadvertised MAIL/RCPT parameter\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> BODY=8BITMIME\r\n"),
        "555 5.5.4 Unsupported or unadvertised MAIL/RCPT parameter\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> FOO=BAR\r\n"),
        "555 5.5.4 Unsupported or unadvertised MAIL/RCPT parameter\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> SIZE=2000000\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> SIZE=1000\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.exchange(b"RCPT TO:<c@d.example> NOTIFY=NEVER\r\n"),
        "555 5.5.4 Unsupported or unadvertised MAIL/RCPT parameter\r\n"
    );
}

#[test]
fn dsn_smtputf8_8bitmime_accepted_when_advertised() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(
            "MAIL FROM:<jörg@bücher.example> SMTPUTF8 BODY=8BITMIME RET=HDRS ENVID=QQ314159\r\n"
                .as_bytes()
        ),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.exchange(
            "RCPT TO:<用户@例子.广告> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;x@y.example\r\n"
                .as_bytes()
        ),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(h.exchange(b"RSET\r\n"), "250 2.0.0 Flushed\r\n");
    // Without SMTPUTF8, a non-ASCII address is refused.
    assert_eq!(
        h.exchange("MAIL FROM:<jörg@bücher.example>\r\n".as_bytes()),
        "553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.exchange("RCPT TO:<用户@例子.广告>\r\n".as_bytes()),
        "553 5.6.7 Non-ASCII addresses require SMTPUTF8\r\n"
    );
}

#[test]
fn null_sender_and_postmaster() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    assert_eq!(h.exchange(b"MAIL FROM:<>\r\n"), "250 2.1.0 Sender OK\r\n");
    assert_eq!(
        h.exchange(b"RCPT TO:<Postmaster>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert_eq!(
        h.exchange(b"RCPT TO:<POSTMASTER>\r\n"),
        "250 2.1.5 Recipient OK\r\n"
    );
    assert!(h.log.events.iter().any(|e| e == "RCPT Postmaster"));
    assert!(h.log.events.iter().any(|e| e == "MAIL <>"));
}

#[test]
fn bad_addresses() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@@b>\r\n"),
        "501 5.1.7 Bad sender address syntax\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a.@b.example>\r\n"),
        "501 5.1.7 Bad sender address syntax\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.exchange(b"RCPT TO:<a b@c>\r\n"),
        "501 5.1.3 Bad recipient address syntax\r\n"
    );
    assert_eq!(
        h.exchange(b"RCPT TO:\r\n"),
        "501 5.1.3 Bad recipient address syntax\r\n"
    );
}

#[test]
fn lenient_addresses_option() {
    let mut c = cfg();
    c.lenient_addresses = true;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"MAIL FROM:<a.@b.example>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
}

#[test]
fn too_many_recipients() {
    let mut c = cfg();
    c.limits.max_recipients = 2;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    let out =
        h.exchange(b"RCPT TO:<x@y.example>\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<x@y.example>\r\n");
    assert_eq!(
        out,
        "250 2.1.5 Recipient OK\r\n250 2.1.5 Recipient OK\r\n452 4.5.3 Too many recipients\r\n"
    );
}

#[test]
fn message_too_big_is_rejected_and_not_delivered() {
    let mut c = cfg();
    c.limits.max_message_size = 100;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
    let body = "x".repeat(60) + "\r\n" + &"y".repeat(60) + "\r\n.\r\n";
    assert_eq!(
        h.exchange(body.as_bytes()),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert!(h.log.messages.is_empty());
    assert!(h.log.events.iter().any(|e| e == "ABORTED TooBig"));
    // The session goes on.
    assert_eq!(h.exchange(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
}

#[test]
fn smuggling_variants_never_end_data() {
    for variant in ["\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r\n.\r", "\r.\r\n"] {
        let mut h = Harness::new(cfg());
        h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
        let attack = format!(
            "Subject: one{variant}MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@y.example>\r\nDATA\r\nSubject: smuggled\r\n\r\n.\r\n"
        );
        let out = h.exchange(attack.as_bytes());
        assert_eq!(
            out, "550 5.5.2 Message rejected: bare LF or CR received; lines must end with CRLF\r\n",
            "variant {variant:?}"
        );
        assert!(h.log.messages.is_empty(), "variant {variant:?}");
        assert!(
            !h.log.events.iter().any(|e| e.contains("evil")),
            "variant {variant:?}"
        );
        // The next real command is a command again.
        assert_eq!(h.exchange(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    }
}

#[test]
fn bare_lf_accepted_when_policy_allows_but_still_not_an_end() {
    let mut c = cfg();
    c.limits.bare_line_endings = smtp_proto::config::ContentPolicy::Accept;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
    let out = h.exchange(b"one\n.\nMAIL FROM:<evil@x>\r\n.\r\n");
    assert_eq!(out, "250 2.0.0 Message accepted for delivery\r\n");
    assert_eq!(
        h.log.messages,
        vec![b"one\n.\nMAIL FROM:<evil@x>\r\n".to_vec()]
    );
}

#[test]
fn bare_lf_in_command_line() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    let out = h.exchange(b"MAIL FROM:<a@b.example>\nRCPT TO:<x@y.example>\r\nNOOP\r\n");
    assert_eq!(
        out,
        "500 5.5.2 Bare LF or CR in command line; lines must end with CRLF\r\n250 2.0.0 OK\r\n"
    );
    assert!(!h.log.events.iter().any(|e| e.starts_with("MAIL")));
}

#[test]
fn long_command_line_is_poisoned_not_buffered() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    let long = vec![b'A'; 100_000];
    let out = h.exchange(&long);
    assert_eq!(out, "");
    let out = h.exchange(b"AAAA\r\nNOOP\r\n");
    assert_eq!(out, "500 5.5.2 Line too long\r\n250 2.0.0 OK\r\n");
}

#[test]
fn long_text_line_policy() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
    let body = "z".repeat(1200) + "\r\n.\r\n";
    assert_eq!(
        h.exchange(body.as_bytes()),
        "550 5.6.0 Message rejected: a text line is longer than allowed\r\n"
    );
    assert!(h.log.messages.is_empty());
}

#[test]
fn bdat_chunks() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n");
    let out = h.exchange(b"BDAT 10\r\nSubject: xBDAT 9 LAST\r\n\r\nhi\r\n.\r\n");
    assert_eq!(
        out,
        "250 2.0.0 10 octets received\r\n250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(h.log.messages, vec![b"Subject: x\r\nhi\r\n.\r\n".to_vec()]);
    // DATA after BDAT in one transaction is refused; BDAT 0 LAST ends a message.
    h.exchange(b"MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n");
    assert_eq!(
        h.exchange(b"BDAT 3\r\nabc"),
        "250 2.0.0 3 octets received\r\n"
    );
    assert_eq!(
        h.exchange(b"DATA\r\n"),
        "503 5.5.1 DATA and BDAT cannot be mixed in one transaction\r\n"
    );
    assert_eq!(
        h.exchange(b"BDAT 0 LAST\r\n"),
        "250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(h.log.messages[1], b"abc");
}

#[test]
fn bdat_without_transaction_consumes_its_octets() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    // The chunk's octets look like commands; they must never run.
    let out = h.exchange(b"BDAT 26\r\nMAIL FROM:<evil@x.example>NOOP\r\n");
    assert_eq!(out, "503 5.5.1 Need MAIL command first\r\n250 2.0.0 OK\r\n");
    assert!(!h.log.events.iter().any(|e| e.contains("evil")));
}

#[test]
fn binarymime_needs_bdat() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    h.exchange(b"MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<x@y.example>\r\n");
    assert_eq!(
        h.exchange(b"DATA\r\n"),
        "503 5.5.1 BODY=BINARYMIME requires BDAT\r\n"
    );
    // Binary content with bare LF is fine under BINARYMIME.
    assert_eq!(
        h.exchange(b"BDAT 4 LAST\r\n\x00\n\r\xff"),
        "250 2.0.0 Message accepted for delivery\r\n"
    );
}

#[test]
fn starttls_discards_pipelined_plaintext_and_resets() {
    let mut c = cfg();
    c.extensions.starttls = true;
    let mut h = Harness::new(c);
    let out = h.exchange(b"EHLO c\r\n");
    assert!(out.contains("250-STARTTLS\r\n"));
    // One write: STARTTLS plus an injected command.
    let out = h.exchange(b"STARTTLS\r\nMAIL FROM:<evil@x.example>\r\n");
    assert_eq!(out, "220 2.0.0 Ready to start TLS\r\n");
    assert!(h.s.is_tls());
    assert!(
        h.log
            .events
            .iter()
            .any(|e| e == "VIOLATION StartTlsInjection")
    );
    assert!(!h.log.events.iter().any(|e| e.contains("evil")));
    // The session is back to the pre-EHLO state.
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example>\r\n"),
        "503 5.5.1 Send HELO/EHLO first\r\n"
    );
    let out = h.exchange(b"EHLO c\r\n");
    assert!(!out.contains("STARTTLS"));
    assert_eq!(
        h.exchange(b"STARTTLS\r\n"),
        "554 5.5.1 TLS already active\r\n"
    );
}

#[test]
fn starttls_not_offered_without_tls() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"STARTTLS\r\n"),
        "502 5.5.1 Command not implemented\r\n"
    );
}

#[test]
fn require_tls() {
    let mut c = cfg();
    c.require_tls = true;
    c.extensions.starttls = true;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example>\r\n"),
        "530 5.7.0 Must issue a STARTTLS command first\r\n"
    );
    h.exchange(b"STARTTLS\r\n");
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
}

#[test]
fn implicit_tls_peer() {
    let mut c = cfg();
    c.extensions.starttls = true;
    c.extensions.requiretls = true;
    c.auth.mechanisms = vec![Mechanism::Plain];
    let peer = PeerInfo {
        tls: Some(Default::default()),
        ..PeerInfo::default()
    };
    let mut h = Harness::with_peer(c, peer);
    let out = h.exchange(b"EHLO c\r\n");
    assert!(!out.contains("STARTTLS"));
    assert!(out.contains("250-REQUIRETLS\r\n"));
    assert!(out.contains("250-AUTH PLAIN\r\n"));
    assert_eq!(
        h.exchange(b"STARTTLS\r\n"),
        "554 5.5.1 TLS already active\r\n"
    );
}

fn auth_cfg() -> Config {
    let mut c = cfg();
    c.auth.mechanisms = vec![Mechanism::Plain, Mechanism::Login];
    c.auth.allow_plaintext = true;
    c
}

#[test]
fn auth_plain_initial_response() {
    let mut h = Harness::new(auth_cfg());
    let out = h.exchange(b"EHLO c\r\n");
    assert!(out.contains("250-AUTH PLAIN LOGIN\r\n"));
    // "\0bob\0secret"
    assert_eq!(
        h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"),
        "235 2.7.0 Authentication successful\r\n"
    );
    assert_eq!(h.s.authenticated(), Some("bob"));
    assert_eq!(
        h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"),
        "503 5.5.1 Already authenticated\r\n"
    );
    let out = h.exchange(b"EHLO c\r\n");
    assert!(
        !out.contains("AUTH"),
        "AUTH not offered again once authenticated"
    );
}

#[test]
fn auth_login_exchange_and_failures() {
    let mut h = Harness::new(auth_cfg());
    h.exchange(b"EHLO c\r\n");
    assert_eq!(h.exchange(b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.exchange(b"Ym9i\r\n"), "334 UGFzc3dvcmQ6\r\n");
    assert_eq!(
        h.exchange(b"d3Jvbmc=\r\n"),
        "535 5.7.8 Authentication credentials invalid\r\n"
    );
    assert_eq!(h.exchange(b"AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(
        h.exchange(b"*\r\n"),
        "501 5.0.0 Authentication cancelled\r\n"
    );
    assert_eq!(
        h.exchange(b"AUTH PLAIN !!!\r\n"),
        "501 5.5.4 Syntax error in parameters or arguments\r\n"
    );
    assert_eq!(h.exchange(b"AUTH PLAIN\r\n"), "334 \r\n");
    assert_eq!(h.exchange(b"%%%\r\n"), "501 5.5.2 Invalid base64 data\r\n");
    assert_eq!(
        h.exchange(b"AUTH CRAM-MD5\r\n"),
        "504 5.5.4 Unrecognized authentication type\r\n"
    );
    assert_eq!(h.s.authenticated(), None);
}

#[test]
fn auth_not_offered_on_plaintext_by_default() {
    let mut c = cfg();
    c.auth.mechanisms = vec![Mechanism::Plain];
    let mut h = Harness::new(c);
    let out = h.exchange(b"EHLO c\r\n");
    assert!(!out.contains("AUTH"));
    assert_eq!(
        h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"),
        "538 5.7.11 Encryption required for requested authentication mechanism\r\n"
    );
}

#[test]
fn auth_required() {
    let mut c = auth_cfg();
    c.auth.required = true;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example>\r\n"),
        "530 5.7.0 Authentication required\r\n"
    );
    h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> AUTH=<>\r\n"),
        "250 2.1.0 Sender OK\r\n"
    );
    assert_eq!(
        h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"),
        "503 5.5.1 Already authenticated\r\n"
    );
}

#[test]
fn credentials_never_in_debug() {
    let mut h = Harness::new(auth_cfg());
    h.exchange(b"EHLO c\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    assert!(!format!("{:?}", h.s).contains("secret"));
}

fn lmtp_cfg() -> Config {
    let mut c = cfg();
    c.lmtp = true;
    c
}

#[test]
fn lmtp_one_reply_per_recipient() {
    let mut h = Harness::new(lmtp_cfg());
    assert_eq!(
        h.exchange(b"EHLO c\r\n"),
        "500 5.5.1 Use LHLO in LMTP mode\r\n"
    );
    assert_eq!(
        h.exchange(b"HELO c\r\n"),
        "500 5.5.1 Use LHLO in LMTP mode\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example>\r\n"),
        "503 5.5.1 Send LHLO first\r\n"
    );
    assert!(h.exchange(b"LHLO c\r\n").starts_with("250-mx.example\r\n"));
    let out = h.exchange(
        b"MAIL FROM:<a@b.example>\r\nRCPT TO:<one@x.example>\r\nRCPT TO:<nobody@x.example>\r\nRCPT TO:<full@x.example>\r\nRCPT TO:<two@x.example>\r\nDATA\r\n",
    );
    assert!(out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n"));
    let out = h.exchange(b"hello\r\n.\r\n");
    assert_eq!(
        out,
        "250 2.0.0 Message accepted for delivery\r\n452 4.2.2 Mailbox full\r\n250 2.0.0 Message accepted for delivery\r\n"
    );
}

#[test]
fn lmtp_data_without_recipients_is_503() {
    let mut h = Harness::new(lmtp_cfg());
    h.exchange(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    assert_eq!(
        h.exchange(b"DATA\r\n"),
        "503 5.5.1 Need RCPT command first\r\n"
    );
}

#[test]
fn lhlo_is_unknown_in_smtp() {
    let mut h = Harness::new(cfg());
    assert_eq!(
        h.exchange(b"LHLO c\r\n"),
        "500 5.5.2 Syntax error, command unrecognized\r\n"
    );
}

#[test]
fn vrfy_expn_help() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"VRFY bob\r\n"),
        "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
    );
    assert!(h.exchange(b"HELP\r\n").starts_with("214 2.0.0 "));
    assert_eq!(
        h.exchange(b"VRFY\r\n"),
        "501 5.5.4 Syntax error in parameters or arguments\r\n"
    );
}

#[test]
fn connect_rejections() {
    let peer = PeerInfo::new("192.0.2.44:1".parse().unwrap());
    let h = Harness::with_peer(cfg(), peer);
    assert_eq!(h.output(), "421 4.7.0 Try later\r\n");
    assert!(h.s.is_closed());

    let peer = PeerInfo::new("192.0.2.66:1".parse().unwrap());
    let mut h = Harness::with_peer(cfg(), peer);
    assert_eq!(h.output(), "554 5.7.1 No service for you\r\n");
    assert_eq!(
        h.exchange(b"EHLO c\r\n"),
        "503 5.5.1 No SMTP service here\r\n"
    );
    assert_eq!(h.exchange(b"QUIT\r\n"), "221 2.0.0 Bye\r\n");
}

#[test]
fn helo_rejection_counts_and_keeps_session() {
    let mut h = Harness::new(cfg());
    assert_eq!(
        h.exchange(b"EHLO reject.example\r\n"),
        "550 5.7.1 Go away\r\n"
    );
    assert!(
        h.exchange(b"EHLO ok.example\r\n")
            .starts_with("250-mx.example")
    );
}

#[test]
fn command_timeout_is_a_deadline() {
    let mut c = cfg();
    c.timeouts.command = Duration::from_secs(10);
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    // A byte every 3 s never completes a command: the deadline holds.
    for _ in 0..3 {
        h.advance(Duration::from_secs(3));
        h.send(b"N");
    }
    h.advance(Duration::from_secs(2));
    assert!(
        h.output()
            .ends_with("421 4.4.2 Timeout exceeded, closing connection\r\n")
    );
    assert!(h.s.is_closed());
}

#[test]
fn idle_session_releases_its_buffers() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
    let line = [&[b'x'; 98][..], b"\r\n"].concat();
    let mut body = line.repeat(100);
    body.extend_from_slice(b"partial");
    h.send(&body);
    let held = h.s.buffer_bytes();
    assert!(held >= 10_000, "a body grows the input buffer: {held}");
    // A slow client mid-body: the bytes were passed on, so even then the
    // buffers go, and the body carries on intact.
    h.advance(Duration::from_secs(5));
    assert_eq!(h.s.buffer_bytes(), 0);
    // An adapter waiting to read takes a small buffer back, and that is
    // not released again before new input (no wake-up loop).
    assert_eq!(h.s.read_buf().len(), 1024);
    assert_eq!(h.s.poll_timeout(), h.s.client_deadline());
    let out = h.out.len();
    h.exchange(b" line\r\n.\r\n");
    body.extend_from_slice(b" line\r\n");
    assert_eq!(h.log.messages.len(), 1);
    assert!(h.log.messages[0] == body, "the body changed");
    let open = h.s.buffer_bytes();
    assert!(open > 0);
    // Just before the idle time: kept. At it: freed, silently.
    h.advance(Duration::from_millis(999));
    assert_eq!(h.s.buffer_bytes(), open);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.s.buffer_bytes(), 0);
    assert!(!h.s.is_closed());
    assert_eq!(
        h.out.len(),
        out + "250 2.0.0 Message accepted for delivery\r\n".len()
    );
    // Nothing more to free: the next wake-up is the client's deadline,
    // even once an adapter takes its read buffer back.
    assert_eq!(h.s.poll_timeout(), h.s.client_deadline());
    assert!(!h.s.read_buf().is_empty());
    assert_eq!(h.s.poll_timeout(), h.s.client_deadline());
    // The session goes on; the command deadline still counts from the last input.
    assert_eq!(h.exchange(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    assert!(h.s.buffer_bytes() > 0);
    h.advance(Duration::from_secs(300));
    assert!(
        h.output()
            .ends_with("421 4.4.2 Timeout exceeded, closing connection\r\n")
    );
}

#[test]
fn release_idle_max_turns_it_off() {
    let mut c = cfg();
    c.timeouts.release_idle = Duration::MAX;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    assert_eq!(h.s.poll_timeout(), h.s.client_deadline());
    h.advance(Duration::from_secs(60));
    assert!(h.s.buffer_bytes() > 0);
}

#[test]
fn timeout_mid_data_delivers_nothing() {
    let mut h = Harness::new(cfg());
    h.exchange(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\npartial\r\n",
    );
    h.advance(Duration::from_secs(181));
    assert!(
        h.output()
            .ends_with("421 4.4.2 Timeout exceeded, closing connection\r\n")
    );
    assert!(h.log.messages.is_empty());
    assert!(h.log.events.iter().any(|e| e == "ABORTED Timeout"));
}

#[test]
fn eof_mid_data_delivers_nothing() {
    let mut h = Harness::new(cfg());
    h.exchange(
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\npartial\r\n",
    );
    h.eof();
    assert!(h.log.messages.is_empty());
    assert!(h.log.events.iter().any(|e| e == "ABORTED Disconnected"));
    assert!(h.s.is_closed());
}

#[test]
fn too_many_errors_closes() {
    let mut c = cfg();
    c.limits.hard_error_limit = 3;
    c.limits.soft_error_limit = 1;
    let mut h = Harness::new(c);
    let out = h.exchange(b"X\r\nX\r\nX\r\nX\r\n");
    assert_eq!(
        out,
        "500 5.5.2 Syntax error, command unrecognized\r\n500 5.5.2 Syntax error, command unrecognized\r\n\
         500 5.5.2 Syntax error, command unrecognized\r\n421 4.7.0 Too many errors, closing connection\r\n"
    );
    assert!(h.log.events.iter().any(|e| e == "THROTTLE"));
    assert!(h.s.is_closed());
}

#[test]
fn past_the_soft_error_limit_the_session_waits() {
    use smtp_proto::drive::{Instruction, Output};
    use smtp_proto::server::{Decision, Event, Session};
    use std::sync::Arc;
    use std::time::Instant;
    let mut c = cfg();
    c.limits.soft_error_limit = 1;
    c.limits.error_delay = Duration::from_secs(2);
    let now = Instant::now();
    let mut s = Session::new(Arc::new(c), PeerInfo::default(), now);
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, now).unwrap();
    s.receive(b"EHLO c\r\n", now);
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, now).unwrap();
    let n = s.transmit().len();
    s.transmitted(n);
    s.receive(b"X\r\nX\r\nNOOP\r\n", now);
    let instruction = |s: &mut Session| loop {
        match s.poll() {
            Output::Event(Event::Violation(_)) => {}
            Output::Event(other) => panic!("{other:?}"),
            Output::Instruction(i) => break i,
        }
    };
    // The second error is past the limit: its reply goes out, then the
    // session waits, parsing nothing (the NOOP stays unanswered).
    let until = now + Duration::from_secs(2);
    assert_eq!(instruction(&mut s), Instruction::Throttle(until));
    let out = String::from_utf8_lossy(s.transmit()).into_owned();
    assert_eq!(out.matches("500 5.5.2").count(), 2, "{out}");
    assert!(!out.contains("250"), "{out}");
    // A state: the same again, and an early timer changes nothing.
    assert_eq!(instruction(&mut s), Instruction::Throttle(until));
    s.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(instruction(&mut s), Instruction::Throttle(until));
    assert_eq!(String::from_utf8_lossy(s.transmit()), out);
    // At its end the session goes on.
    s.handle_timeout(until);
    assert!(matches!(instruction(&mut s), Instruction::Idle { .. }));
    let after = String::from_utf8_lossy(s.transmit()).into_owned();
    assert_eq!(after.strip_prefix(out.as_str()), Some("250 2.0.0 OK\r\n"));
}

#[test]
fn junk_commands_count_as_errors_past_the_limit() {
    let mut c = cfg();
    c.limits.junk_command_limit = 5;
    c.limits.hard_error_limit = 3;
    let mut h = Harness::new(c);
    let out = h.exchange(&b"NOOP\r\n".repeat(10));
    assert!(out.ends_with("421 4.7.0 Too many errors, closing connection\r\n"));
    assert_eq!(out.matches("250 2.0.0 OK").count(), 8);
}

#[test]
fn pipelining_violations_are_reported_or_disconnect() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nNOOP\r\n");
    assert!(h.log.events.iter().any(|e| e.contains("Pipelining")));

    let mut c = cfg();
    c.violations = ViolationPolicy::Disconnect;
    let mut h = Harness::new(c);
    let out = h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    assert_eq!(out, "554 5.5.0 Protocol violation, closing connection\r\n");
    assert!(h.s.is_closed());
}

#[test]
fn pre_greeting_input_is_a_violation() {
    use smtp_proto::server::{Event, Session};
    use std::sync::Arc;
    use std::time::Instant;
    let now = Instant::now();
    let mut s = Session::new(Arc::new(cfg()), PeerInfo::default(), now);
    s.receive(b"EHLO eager\r\n", now);
    let mut saw = false;
    while let Some(ev) = s.poll().event() {
        if matches!(
            ev,
            Event::Violation(smtp_proto::server::Violation::PreGreeting)
        ) {
            saw = true;
        }
        if let Some(t) = ev.into_ticket() {
            s.respond(t, smtp_proto::server::Decision::Accept, now)
                .unwrap();
        }
    }
    assert!(saw);
}

#[test]
fn backpressure_client_that_never_reads() {
    let mut c = cfg();
    c.limits.junk_command_limit = u32::MAX;
    let mut s = smtp_proto::server::Session::new(
        std::sync::Arc::new(c),
        PeerInfo::default(),
        std::time::Instant::now(),
    );
    let now = std::time::Instant::now();
    let t = next_ticket(&mut s);
    s.respond(t, smtp_proto::server::Decision::Accept, now)
        .unwrap();
    let noops = b"NOOP\r\n".repeat(100_000);
    let mut fed = 0;
    // Never call transmitted(): the output must stop growing and input stop being taken.
    for _ in 0..10_000 {
        let n = s.receive(&noops[fed..], now);
        fed += n;
        while s.poll().event().is_some() {}
        if n == 0 {
            break;
        }
    }
    assert!(!s.wants_read());
    assert!(fed < noops.len());
    assert!(s.transmit().len() <= 64 * 1024 + 64);
}

#[test]
fn shutdown_between_and_during_transactions() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    h.s.shutdown();
    h.pump();
    assert!(
        h.output()
            .ends_with("421 4.3.2 Service shutting down, closing connection\r\n")
    );
    assert!(h.s.is_closed());

    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
    h.s.shutdown();
    h.pump();
    assert!(!h.s.is_closed(), "a transaction may finish");
    let out = h.exchange(b"body\r\n.\r\n");
    assert_eq!(
        out,
        "250 2.0.0 Message accepted for delivery\r\n421 4.3.2 Service shutting down, closing connection\r\n"
    );
    assert_eq!(h.log.messages.len(), 1);
}

#[test]
fn proxy_protocol_sets_peer() {
    let mut c = cfg();
    c.proxy_protocol = true;
    let mut h = Harness::new(c);
    assert_eq!(h.output(), "");
    let out = h.exchange(b"PROXY TCP4 198.51.100.7 203.0.113.1 51000 25\r\n");
    assert_eq!(out, "220 mx.example ESMTP ready\r\n");
    assert_eq!(
        h.s.peer().remote,
        Some("198.51.100.7:51000".parse().unwrap())
    );
    let hdr = String::from_utf8(h.s.received_header(Some("id1"), None, 0, 0)).unwrap();
    assert!(hdr.contains("198.51.100.7"), "{hdr}");
}

#[test]
fn proxy_protocol_garbage_closes_silently() {
    let mut c = cfg();
    c.proxy_protocol = true;
    let mut h = Harness::new(c);
    let out = h.exchange(b"EHLO c\r\n");
    assert_eq!(out, "");
    assert!(h.s.is_closed());
}

#[test]
fn received_header_protocols() {
    let mut c = auth_cfg();
    c.extensions.starttls = true;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO client.example\r\nSTARTTLS\r\n");
    h.exchange(b"EHLO client.example\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    let hdr =
        String::from_utf8(h.s.received_header(Some("abc"), Some("x@y.example"), 0, 0)).unwrap();
    assert!(hdr.starts_with("Received: from client.example"), "{hdr}");
    assert!(hdr.contains("with ESMTPSA"), "{hdr}");
    assert!(hdr.contains("192.0.2.1"), "{hdr}");
    assert!(hdr.ends_with("\r\n"));
}

#[test]
fn ehlo_keywords_can_be_hidden_and_added() {
    let mut h = Harness::new(cfg());
    h.s.extensions_mut().pipelining = false;
    h.s.add_ehlo_keyword("XFOO bar");
    let out = h.exchange(b"EHLO c\r\n");
    assert!(!out.contains("PIPELINING"));
    assert!(out.ends_with("250-HELP\r\n250 XFOO bar\r\n"));
}

/// The next decision's ticket, skipping informational events.
fn next_ticket(s: &mut smtp_proto::server::Session) -> smtp_proto::server::Ticket {
    loop {
        if let Some(t) = s.poll().event().expect("an event").into_ticket() {
            return t;
        }
    }
}

// ----- regressions from the review of the core -----

#[test]
fn vrfy_past_the_junk_limit_in_a_full_buffer_does_not_panic() {
    let mut c = cfg();
    c.limits.hard_error_limit = 3;
    c.limits.junk_command_limit = 2;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    let mut input = b"NOOP\r\n".repeat(4);
    input.extend_from_slice(b"VRFY x\r\n");
    input.resize(16 * 1024 + 200, b'A');
    h.send(&input);
    assert!(h.s.is_closed());
    assert!(
        h.output()
            .ends_with("421 4.7.0 Too many errors, closing connection\r\n")
    );
}

#[test]
fn input_after_close_is_ignored() {
    let mut h = Harness::new(cfg());
    h.exchange(b"QUIT\r\n");
    assert!(h.s.is_closed());
    assert_eq!(h.s.receive(b"NOOP\r\n", h.now), 0);
    assert!(h.s.read_buf().is_empty());
}

#[test]
fn lmtp_core_refusal_is_one_reply_per_recipient() {
    let mut h = Harness::new(lmtp_cfg());
    h.exchange(b"LHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<one@x.example>\r\nRCPT TO:<two@x.example>\r\nDATA\r\n");
    let out = h.exchange(b"bare\nlf\r\n.\r\n");
    assert_eq!(out.matches("550 5.5.2").count(), 2, "{out}");
}

#[test]
fn auth_with_initial_response_may_be_pipelined() {
    let mut c = auth_cfg();
    c.violations = ViolationPolicy::Disconnect;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    let out = h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\nMAIL FROM:<a@b.example>\r\n");
    assert_eq!(
        out,
        "235 2.7.0 Authentication successful\r\n250 2.1.0 Sender OK\r\n"
    );
}

#[test]
fn starttls_handshake_has_a_deadline() {
    let mut c = cfg();
    c.extensions.starttls = true;
    let mut h = Harness::new(c);
    h.auto_tls = false;
    h.exchange(b"EHLO c\r\nSTARTTLS\r\n");
    assert!(h.s.poll_timeout().is_some());
    let before = h.output();
    h.advance(Duration::from_secs(301));
    assert!(h.s.is_closed());
    assert_eq!(h.output(), before, "no clear-text reply mid-handshake");
}

#[test]
fn shutdown_is_rechecked_after_reset() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    h.s.shutdown();
    h.pump();
    assert!(!h.s.is_closed());
    let out = h.exchange(b"RSET\r\nMAIL FROM:<a@b.example>\r\n");
    assert_eq!(
        out,
        "250 2.0.0 Flushed\r\n421 4.3.2 Service shutting down, closing connection\r\n"
    );
    assert!(h.s.is_closed());
}

#[test]
fn accepting_helo_with_a_custom_reply_is_no_error() {
    use smtp_proto::server::{Decision, Session};
    use std::sync::Arc;
    use std::time::Instant;
    let mut c = cfg();
    c.limits.hard_error_limit = 2;
    let now = Instant::now();
    let mut s = Session::new(Arc::new(c), PeerInfo::default(), now);
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, now).unwrap();
    for _ in 0..3 {
        s.receive(b"HELO c\r\n", now);
        let t = next_ticket(&mut s);
        s.respond(t, smtp_proto::reply::Reply::plain(250, "hi there"), now)
            .unwrap();
        while s.poll().event().is_some() {}
    }
    assert!(!s.is_closed());
}

#[test]
fn a_421_decision_closes() {
    use smtp_proto::reply::{EnhancedCode, Reply};
    use smtp_proto::server::{Decision, Session};
    use std::sync::Arc;
    use std::time::Instant;
    let now = Instant::now();
    let mut s = Session::new(Arc::new(cfg()), PeerInfo::default(), now);
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, now).unwrap();
    s.receive(b"EHLO c\r\n", now);
    let t = next_ticket(&mut s);
    s.respond(
        t,
        Reply::new(421, EnhancedCode::new(4, 3, 2), "Going down"),
        now,
    )
    .unwrap();
    assert!(s.is_closed());
}

#[test]
fn the_clock_never_goes_back() {
    use smtp_proto::server::{Decision, Session};
    use std::sync::Arc;
    use std::time::Instant;
    let t0 = Instant::now();
    let later = t0 + Duration::from_secs(100);
    let mut s = Session::new(Arc::new(cfg()), PeerInfo::default(), t0);
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, later).unwrap();
    let command = cfg().timeouts.command;
    // Input stamped before the time the session was told last (a caller
    // that read its clock before a slow step): deadlines count from the
    // later time, never from the earlier one.
    s.receive(b"NOOP\r\n", t0);
    while s.poll().event().is_some() {}
    assert_eq!(s.client_deadline(), Some(later + command));
    s.handle_timeout(later + Duration::from_secs(1));
    s.receive(b"NOOP\r\n", t0);
    while s.poll().event().is_some() {}
    assert_eq!(
        s.client_deadline(),
        Some(later + Duration::from_secs(1) + command)
    );
}

#[test]
fn a_staged_body_chunk_survives_input_before_poll() {
    use smtp_proto::server::{Decision, Event, Session};
    use std::sync::Arc;
    use std::time::Instant;
    let now = Instant::now();
    let mut s = Session::new(Arc::new(cfg()), PeerInfo::default(), now);
    let feed = |s: &mut Session, bytes: &[u8]| {
        s.receive(bytes, now);
        while let Some(ev) = s.poll().event() {
            if let Some(t) = ev.into_ticket() {
                s.respond(t, Decision::Accept, now).unwrap();
            }
        }
    };
    feed(&mut s, b"");
    feed(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n",
    );
    s.receive(b"hello\r\n", now);
    // (BodyStart came out with the 354, in `feed`.)
    assert!(s.has_event(), "the first chunk is staged");
    // Input before `poll`: refused, and the staged chunk stays intact.
    assert_eq!(s.receive(b"WORLD\r\n", now), 0);
    assert!(!s.wants_read());
    match s.poll().event() {
        Some(Event::Body(chunk)) => assert_eq!(chunk, b"hello\r\n"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.receive(b"WORLD\r\n", now), 7);
}

#[test]
fn a_throttle_shows_in_poll_timeout_and_wants_read() {
    use smtp_proto::drive::{Instruction, Output};
    use smtp_proto::server::{Decision, Session};
    use std::sync::Arc;
    use std::time::Instant;
    let mut c = cfg();
    c.limits.soft_error_limit = 0;
    c.limits.error_delay = Duration::from_secs(2);
    let now = Instant::now();
    let mut s = Session::new(Arc::new(c), PeerInfo::default(), now);
    let t = next_ticket(&mut s);
    s.respond(t, Decision::Accept, now).unwrap();
    let n = s.transmit().len();
    s.transmitted(n);
    s.receive(b"XYZZY\r\n", now);
    let until = loop {
        match s.poll() {
            Output::Event(_) => {}
            Output::Instruction(Instruction::Throttle(until)) => break until,
            Output::Instruction(other) => panic!("not throttled: {other:?}"),
        }
    };
    assert_eq!(until, now + Duration::from_secs(2));
    assert_eq!(
        s.poll_timeout(),
        Some(until),
        "the throttle's end is a wake-up"
    );
    assert!(!s.wants_read(), "nothing is read while throttled");
    s.handle_timeout(until);
    assert!(s.wants_read());
}
