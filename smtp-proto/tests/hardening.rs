//! Issue 12 (hardening), the protocol core's items: transcripts of what
//! real clients and probes found (bare-LF command lines, long DSN lines,
//! `--require-tls` gaps, NUL smuggling, small reply codes, trace keywords).
#![allow(clippy::unwrap_used)]

mod common;

use common::{Harness, run_split};
use smtp_proto::config::{Config, ContentPolicy};
use smtp_proto::sasl::Mechanism;
use smtp_proto::server::{PeerInfo, TlsInfo};

fn cfg() -> Config {
    let mut c = Config::new("mx.example");
    c.limits.max_message_size = 1_000_000;
    c
}

fn tls_peer() -> PeerInfo {
    PeerInfo {
        remote: Some("192.0.2.1:40000".parse().unwrap()),
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_128_GCM_SHA256".into(),
            channel_binding: None,
        }),
        ..PeerInfo::default()
    }
}

const BARE_LF: &str = "500 5.5.2 Bare LF or CR in command line; lines must end with CRLF\r\n";

// ----- item 22: a command line ended by a bare LF is answered at once -----

#[test]
fn bare_lf_command_line_is_answered_at_once() {
    let mut h = Harness::new(cfg());
    // netcat without -C: every line gets its answer at once, none runs.
    assert_eq!(h.exchange(b"EHLO x\n"), BARE_LF);
    assert_eq!(h.exchange(b"MAIL FROM:<a@b.example>\n"), BARE_LF);
    assert!(
        !h.log
            .events
            .iter()
            .any(|e| e.starts_with("Ehlo") || e.starts_with("MAIL"))
    );
    // The CRLF that finally ends the line is not a second answer, and
    // what followed the bare LF never ran.
    assert_eq!(h.exchange(b"RCPT TO:<x@y.example>\r\n"), "");
    assert!(!h.log.events.iter().any(|e| e.starts_with("RCPT")));
    // The next CRLF line is a command again.
    assert_eq!(h.exchange(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
}

#[test]
fn bare_lf_in_a_pipelined_line_gets_one_answer_and_runs_nothing() {
    // A CRLF client whose line holds a stray LF (an injected address):
    // one answer for that line, so later replies stay in step, and the
    // injected command never runs.
    let input =
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x>\nRCPT TO:<evil@y.example>\r\nNOOP\r\n";
    for split in 0..=input.len() {
        let (out, log) = run_split(&cfg(), input, &[split]);
        let out = String::from_utf8(out).unwrap();
        assert!(
            out.ends_with(&format!("250 2.1.0 Sender OK\r\n{BARE_LF}250 2.0.0 OK\r\n")),
            "split {split}: {out}"
        );
        assert!(
            !log.events.iter().any(|e| e.starts_with("RCPT")),
            "split {split}"
        );
    }
}

#[test]
fn long_bare_lf_fragment_is_answered_too() {
    let mut h = Harness::new(cfg());
    let mut line = vec![b'A'; 2000];
    line.push(b'\n');
    assert_eq!(h.exchange(&line), "500 5.5.2 Line too long\r\n");
    assert_eq!(h.exchange(b"\r\nNOOP\r\n"), "250 2.0.0 OK\r\n");
}

#[test]
fn bare_lf_still_never_ends_data() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
    assert_eq!(h.exchange(b"hello\n.\nQUIT\n"), "");
    assert!(!h.s.is_closed());
    assert_eq!(
        h.exchange(b"\r\n.\r\n"),
        "550 5.5.2 Message rejected: bare LF or CR received; lines must end with CRLF\r\n"
    );
    assert!(h.log.messages.is_empty());
}

#[test]
fn bare_lf_in_an_auth_exchange_is_answered_at_once() {
    let mut c = cfg();
    c.auth.mechanisms = vec![Mechanism::Login];
    c.auth.allow_plaintext = true;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    assert_eq!(h.exchange(b"AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
    assert_eq!(h.exchange(b"Ym9i\n"), BARE_LF);
    assert_eq!(h.exchange(b"\r\nNOOP\r\n"), "250 2.0.0 OK\r\n");
}

// ----- item 23: MAIL/RCPT lines longer by what the extensions add -----

/// A RCPT line of exactly `len` octets (CRLF included): a long address
/// and a DSN ORCPT (valid up to 685 octets: ORCPT holds at most 500).
fn dsn_rcpt(len: usize) -> Vec<u8> {
    let to = format!("{}@{}.example.net", "a".repeat(64), "d".repeat(60));
    let head = format!("RCPT TO:<{to}> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;");
    let tail = "@example.net\r\n";
    let pad = len - head.len() - tail.len();
    let line = format!("{head}{}{tail}", "b".repeat(pad));
    assert_eq!(line.len(), len);
    line.into_bytes()
}

#[test]
fn long_dsn_rcpt_is_accepted() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example> RET=HDRS\r\n");
    assert_eq!(h.exchange(&dsn_rcpt(683)), "250 2.1.5 Recipient OK\r\n");
    // ORCPT's 500 octets, NOTIFY's longest value: still accepted.
    let orcpt = format!("rfc822;{}@example.net", "b".repeat(500 - 19));
    assert_eq!(orcpt.len(), 500);
    let line = format!(
        "RCPT TO:<{}@example.net> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT={orcpt}\r\n",
        "c".repeat(64)
    );
    assert!(line.len() > 600, "{}", line.len());
    assert_eq!(h.exchange(line.as_bytes()), "250 2.1.5 Recipient OK\r\n");
}

#[test]
fn long_mail_with_every_parameter_is_accepted() {
    let mut c = cfg();
    c.auth.mechanisms = vec![Mechanism::Plain];
    c.auth.allow_plaintext = true;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    let line = format!(
        "MAIL FROM:<{}@example.org> SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=FULL ENVID={} AUTH={}\r\n",
        "a".repeat(64),
        "e".repeat(100),
        "u".repeat(450)
    );
    assert!(line.len() > 690, "{}", line.len());
    assert_eq!(h.exchange(line.as_bytes()), "250 2.1.0 Sender OK\r\n");
}

#[test]
fn long_lines_stay_bounded() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    // Past what the advertised extensions allow: refused, not buffered.
    assert_eq!(h.exchange(&dsn_rcpt(1100)), "500 5.5.2 Line too long\r\n");
    // Other commands keep the 512-octet limit.
    let noop = format!("NOOP {}\r\n", "x".repeat(600));
    assert_eq!(h.exchange(noop.as_bytes()), "500 5.5.2 Line too long\r\n");
    // Without DSN advertised, a RCPT line gets no more room.
    let mut c = cfg();
    c.extensions.dsn = false;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\n");
    assert_eq!(h.exchange(&dsn_rcpt(683)), "500 5.5.2 Line too long\r\n");
    assert_eq!(h.exchange(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
}

// ----- item 24: --require-tls also refuses AUTH, VRFY and EXPN -----

#[test]
fn require_tls_refuses_auth_vrfy_expn_before_tls() {
    let mut c = cfg();
    c.require_tls = true;
    c.extensions.starttls = true;
    c.auth.mechanisms = vec![Mechanism::Plain];
    c.auth.allow_plaintext = true;
    let mut h = Harness::new(c);
    // Not offered before TLS either, even with allow_plaintext.
    let ehlo = h.exchange(b"EHLO c\r\n");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let refused = "530 5.7.0 Must issue a STARTTLS command first\r\n";
    assert_eq!(h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"), refused);
    assert_eq!(h.exchange(b"VRFY bob\r\n"), refused);
    assert_eq!(h.exchange(b"EXPN staff\r\n"), refused);
    assert!(
        !h.log
            .events
            .iter()
            .any(|e| e.starts_with("AUTH") || e.starts_with("VERIFY"))
    );
    // After TLS they work.
    h.exchange(b"STARTTLS\r\n");
    assert!(h.exchange(b"EHLO c\r\n").contains("250-AUTH PLAIN"));
    assert!(h.exchange(b"VRFY bob\r\n").starts_with("252 "));
    assert_eq!(
        h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n"),
        "235 2.7.0 Authentication successful\r\n"
    );
}

// ----- item 25: NUL in a body is refused like a bare LF -----

const NUL_REFUSED: &str = "550 5.6.0 Message rejected: NUL character received\r\n";

fn in_data(c: Config) -> Harness {
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n");
    h
}

#[test]
fn nul_in_data_is_refused_and_nothing_delivered() {
    for body in [
        &b"Subject: x\r\n\r\nhello\r\n\x00.\r\nMAIL FROM:<evil@x.example>\r\n.\r\n"[..],
        b"a\x00b\r\n.\r\n",
        b"\x00\r\n.\r\n",
    ] {
        let mut h = in_data(cfg());
        assert_eq!(h.exchange(body), NUL_REFUSED, "{body:?}");
        assert!(h.log.messages.is_empty());
        assert!(
            h.log.events.iter().any(|e| e == "ABORTED NulByte"),
            "{:?}",
            h.log.events
        );
        assert_eq!(h.exchange(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
    }
}

#[test]
fn nul_in_data_is_found_across_splits() {
    let input = b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\nhello\r\n\x00.\r\n.\r\n";
    for split in 0..=input.len() {
        let (out, log) = run_split(&cfg(), input, &[split]);
        let out = String::from_utf8(out).unwrap();
        assert!(out.ends_with(NUL_REFUSED), "split {split}: {out}");
        assert!(log.messages.is_empty(), "split {split}");
    }
}

#[test]
fn nul_in_bdat_is_refused() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\n");
    assert_eq!(
        h.exchange(b"BDAT 4\r\na\x00\r\n"),
        "250 2.0.0 4 octets received\r\n"
    );
    assert_eq!(h.exchange(b"BDAT 3 LAST\r\nb\r\n"), NUL_REFUSED);
    assert!(h.log.messages.is_empty());
}

#[test]
fn nul_allowed_by_policy_and_in_binarymime() {
    let mut c = cfg();
    c.limits.nul_bytes = ContentPolicy::Accept;
    let mut h = in_data(c);
    assert_eq!(
        h.exchange(b"a\x00b\r\n.\r\n"),
        "250 2.0.0 Message accepted for delivery\r\n"
    );
    assert_eq!(h.log.messages, vec![b"a\x00b\r\n".to_vec()]);
    // BINARYMIME is binary: NUL is content there.
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\nMAIL FROM:<a@b.example> BODY=BINARYMIME\r\nRCPT TO:<x@y.example>\r\n");
    assert_eq!(
        h.exchange(b"BDAT 3 LAST\r\n\x00\x01\x02"),
        "250 2.0.0 Message accepted for delivery\r\n"
    );
}

// ----- item 26: small codes -----

#[test]
fn twenty_digit_size_is_too_big_not_a_syntax_error() {
    let mut h = Harness::new(cfg());
    h.exchange(b"EHLO c\r\n");
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> SIZE=99999999999999999999\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> SIZE=18446744073709551616\r\n"),
        "552 5.3.4 Message size exceeds fixed maximum message size\r\n"
    );
    // More than SIZE's 20 digits is still bad syntax (RFC 1870).
    assert_eq!(
        h.exchange(b"MAIL FROM:<a@b.example> SIZE=999999999999999999999\r\n"),
        "501 5.5.4 Invalid parameter value\r\n"
    );
}

#[test]
fn over_long_sasl_line_is_500_5_5_6() {
    let mut c = cfg();
    c.auth.mechanisms = vec![Mechanism::Plain];
    c.auth.allow_plaintext = true;
    let mut h = Harness::new(c);
    h.exchange(b"EHLO c\r\n");
    assert_eq!(h.exchange(b"AUTH PLAIN\r\n"), "334 \r\n");
    let mut long = vec![b'A'; 13_000];
    long.extend_from_slice(b"\r\n");
    assert_eq!(
        h.exchange(&long),
        "500 5.5.6 Authentication Exchange line is too long\r\n"
    );
    assert_eq!(h.exchange(b"NOOP\r\n"), "250 2.0.0 OK\r\n");
}

/// The `with` keyword of the current session's Received header.
fn with_keyword(h: &Harness) -> String {
    let hdr = String::from_utf8(h.s.received_header(Some("id"), None, 0, 0)).unwrap();
    let at = hdr.find(" with ").unwrap() + 6;
    hdr[at..].split_whitespace().next().unwrap().to_owned()
}

#[test]
fn received_with_keyword_after_helo_says_tls_and_auth() {
    let mut c = cfg();
    c.auth.mechanisms = vec![Mechanism::Plain];
    c.auth.allow_plaintext = true;
    let mut h = Harness::new(c.clone());
    h.exchange(b"HELO c\r\n");
    assert_eq!(with_keyword(&h), "SMTP");
    h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    assert_eq!(with_keyword(&h), "ESMTPA");
    let mut h = Harness::with_peer(c.clone(), tls_peer());
    h.exchange(b"HELO c\r\n");
    assert_eq!(with_keyword(&h), "ESMTPS");
    h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    assert_eq!(with_keyword(&h), "ESMTPSA");
    let mut h = Harness::with_peer(c.clone(), tls_peer());
    h.exchange(b"EHLO c\r\n");
    assert_eq!(with_keyword(&h), "ESMTPS");
    let mut h = Harness::new(c.clone());
    h.exchange(b"EHLO c\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    assert_eq!(with_keyword(&h), "ESMTPA");
    let mut l = c;
    l.lmtp = true;
    let mut h = Harness::with_peer(l.clone(), tls_peer());
    h.exchange(b"LHLO c\r\n");
    assert_eq!(with_keyword(&h), "LMTPS");
    h.exchange(b"AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    assert_eq!(with_keyword(&h), "LMTPSA");
    let mut h = Harness::new(l);
    h.exchange(b"LHLO c\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    assert_eq!(with_keyword(&h), "LMTPA");
}

// ----- item 20: the LMTP greeting says LMTP -----

#[test]
fn lmtp_greeting_says_lmtp() {
    let mut c = cfg();
    c.lmtp = true;
    let h = Harness::new(c);
    assert_eq!(h.output(), "220 mx.example LMTP ready\r\n");
    // SMTP keeps its greeting.
    let h = Harness::new(cfg());
    assert_eq!(h.output(), "220 mx.example ESMTP ready\r\n");
}
