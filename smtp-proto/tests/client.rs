//! The client against scripted servers: what goes on the wire, and when.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use smtp_proto::client::{
    Client, ClientAuth, ClientConfig, ClientError, ClientEvent, Envelope, Misuse, Recipient,
    TlsInfo, TlsPolicy,
};
use smtp_proto::command::{BodyType, Notify, Ret};
use smtp_proto::drive::{Instruction, Output};
use smtp_proto::reply::EnhancedCode;
use smtp_proto::sasl::Mechanism;

/// A client and what it did.
struct T {
    c: Client,
    now: Instant,
    /// What the client wrote and the test has not checked yet.
    wire: Vec<u8>,
    /// The events, and the instructions `StartTls` and `Closed` where
    /// they began.
    events: Vec<Output<ClientEvent>>,
    /// The last instruction `poll` returned.
    last: Option<Instruction>,
}

fn config() -> ClientConfig {
    let mut c = ClientConfig::new("client.example");
    c.tls = TlsPolicy::None;
    c
}

fn ehlo(keywords: &[&str]) -> String {
    let mut s = String::new();
    let mut lines = vec!["mx.example greets client.example"];
    lines.extend_from_slice(keywords);
    for (i, l) in lines.iter().enumerate() {
        let sep = if i + 1 == lines.len() { ' ' } else { '-' };
        s.push_str(&format!("250{sep}{l}\r\n"));
    }
    s
}

impl T {
    fn new(config: ClientConfig) -> T {
        let now = Instant::now();
        let mut t = T {
            c: Client::new(config, now),
            now,
            wire: Vec::new(),
            events: Vec::new(),
            last: None,
        };
        t.pump();
        t
    }

    /// Greeting and EHLO with these keywords; checks the client is ready.
    fn ready(config: ClientConfig, keywords: &[&str]) -> T {
        let mut t = T::new(config);
        t.server("220 mx.example ESMTP\r\n");
        assert_eq!(t.sent(), "EHLO client.example\r\n");
        t.server(&ehlo(keywords));
        assert_eq!(t.ev(), ["Ready"]);
        assert!(t.c.is_ready());
        t
    }

    fn pump(&mut self) {
        loop {
            match self.c.poll() {
                Output::Event(e) => self.events.push(Output::Event(e)),
                Output::Instruction(i) => {
                    // An instruction is a state: recorded once, when it begins.
                    let new = self.last != Some(i);
                    self.last = Some(i);
                    if new && matches!(i, Instruction::StartTls | Instruction::Closed) {
                        self.events.push(Output::Instruction(i));
                    }
                    break;
                }
            }
        }
        let out = self.c.transmit().to_vec();
        self.c.transmitted(out.len());
        self.wire.extend_from_slice(&out);
    }

    /// The server sends this.
    fn server(&mut self, s: &str) {
        self.c.receive(s.as_bytes(), self.now);
        self.pump();
    }

    /// What the client sent since the last call.
    fn sent(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.wire)).unwrap()
    }

    /// The events since the last call, described briefly.
    fn ev(&mut self) -> Vec<String> {
        std::mem::take(&mut self.events)
            .into_iter()
            .map(|e| match e {
                Output::Instruction(Instruction::StartTls) => "StartTls".into(),
                Output::Instruction(Instruction::Closed) => "Closed".into(),
                Output::Instruction(i) => format!("{i:?}"),
                Output::Event(ClientEvent::Ready { .. }) => "Ready".into(),
                Output::Event(ClientEvent::Authenticated) => "Authenticated".into(),
                Output::Event(ClientEvent::SendBody) => "SendBody".into(),
                Output::Event(ClientEvent::Recipient { index, reply }) => {
                    format!("Recipient {index} {}", reply.code())
                }
                Output::Event(ClientEvent::MessageAccepted { recipient, reply }) => {
                    format!("Accepted {recipient:?} {}", reply.code())
                }
                Output::Event(ClientEvent::MessageRejected { recipient, reply }) => {
                    format!("Rejected {recipient:?} {}", reply.code())
                }
                Output::Event(ClientEvent::Error(e)) => format!("Error {}", short(&e)),
                Output::Event(e) => format!("{e:?}"),
            })
            .collect()
    }

    fn mail(&mut self, env: &Envelope) {
        self.c.send_mail(env, self.now).unwrap();
        self.pump();
    }

    fn body(&mut self, b: &[u8]) {
        assert_eq!(self.c.push_body(b, self.now), Ok(b.len()));
        self.pump();
    }

    fn end(&mut self) {
        self.c.end_body(self.now).unwrap();
        self.pump();
    }

    fn quit(&mut self) {
        self.c.quit(self.now).unwrap();
        self.pump();
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        if let Some(t) = self.c.poll_timeout() {
            if t <= self.now {
                self.c.handle_timeout(self.now);
            }
        }
        self.pump();
    }
}

fn short(e: &ClientError) -> String {
    match e {
        ClientError::MalformedReply(r) => format!("Malformed {r:?}"),
        ClientError::UnexpectedReply(r) => format!("Unexpected {}", r.code()),
        ClientError::ServiceClosing(r) => format!("Closing {}", r.code()),
        ClientError::Rejected(r) => format!("Rejected {}", r.code()),
        ClientError::TlsRefused(r) => format!("TlsRefused {}", r.code()),
        ClientError::AuthFailed(r) => format!("AuthFailed {}", r.code()),
        e => format!("{e:?}"),
    }
}

fn env(rcpts: &[&str]) -> Envelope {
    Envelope::new(Some("alice@example.org"), rcpts.iter().copied())
}

// ----- greeting, EHLO, HELO, LHLO -----

#[test]
fn ehlo_extensions() {
    let mut t = T::new(config());
    assert_eq!(t.sent(), "", "nothing before the greeting");
    t.server("220-mx.example ESMTP\r\n220 second line\r\n");
    assert_eq!(t.sent(), "EHLO client.example\r\n");
    t.server(&ehlo(&[
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "CHUNKING",
        "BINARYMIME",
        "DSN",
        "ENHANCEDSTATUSCODES",
        "AUTH PLAIN LOGIN",
        "REQUIRETLS",
    ]));
    let Some(Output::Event(ClientEvent::Ready { extensions: e })) = t.events.pop() else {
        panic!()
    };
    assert_eq!(e.name, "mx.example");
    assert!(e.esmtp && e.pipelining && e.eightbitmime && e.smtputf8 && e.chunking);
    assert!(e.binarymime && e.dsn && e.enhanced_status_codes && e.requiretls);
    assert_eq!(e.size, Some(1000));
    assert_eq!(e.auth, ["PLAIN", "LOGIN"]);
    assert_eq!(t.c.extensions(), Some(&e));
}

#[test]
fn helo_fallback_on_500_and_502() {
    for code in ["500", "502"] {
        let mut t = T::new(config());
        t.server("220 mx.example\r\n");
        assert_eq!(t.sent(), "EHLO client.example\r\n");
        t.server(&format!("{code} 5.5.1 What?\r\n"));
        assert_eq!(t.sent(), "HELO client.example\r\n");
        assert_eq!(t.ev(), Vec::<String>::new());
        t.server("250 mx.example\r\n");
        assert_eq!(t.ev(), ["Ready"]);
        let e = t.c.extensions().unwrap();
        assert!(!e.esmtp && !e.pipelining);
        // Lock-step, DATA, no parameters.
        let mut en = env(&["b@example.net"]);
        en.size = Some(10);
        t.mail(&en);
        assert_eq!(t.sent(), "MAIL FROM:<alice@example.org>\r\n");
    }
}

#[test]
fn ehlo_refused_otherwise_quits() {
    let mut t = T::new(config());
    t.server("220 mx.example\r\n");
    t.sent();
    t.server("550 5.7.1 Go away\r\n");
    assert_eq!(t.sent(), "QUIT\r\n");
    assert_eq!(t.ev(), ["Error Rejected 550"]);
    t.server("221 Bye\r\n");
    assert_eq!(t.ev(), ["Closed"]);
    assert!(t.c.is_closed());
}

#[test]
fn helo_refused() {
    let mut t = T::new(config());
    t.server("220 mx.example\r\n502 no\r\n");
    assert_eq!(t.sent(), "EHLO client.example\r\nHELO client.example\r\n");
    t.server("501 bad\r\n");
    assert_eq!(t.ev(), ["Error Rejected 501"]);
    assert_eq!(t.sent(), "QUIT\r\n");
}

#[test]
fn greeting_554_quits_and_421_closes() {
    let mut t = T::new(config());
    t.server("554 5.7.1 No service\r\n");
    assert_eq!(t.ev(), ["Error Rejected 554"]);
    assert_eq!(t.sent(), "QUIT\r\n");
    t.c.receive_eof(t.now);
    t.pump();
    assert_eq!(t.ev(), ["Closed"]);

    let mut t = T::new(config());
    t.server("421 4.3.2 Shutting down\r\n");
    assert_eq!(t.ev(), ["Error Closing 421", "Closed"]);
    assert_eq!(t.sent(), "");
}

#[test]
fn lmtp_uses_lhlo_without_fallback() {
    let mut c = config();
    c.lmtp = true;
    let mut t = T::new(c);
    t.server("220 lmtp.example LMTP\r\n");
    assert_eq!(t.sent(), "LHLO client.example\r\n");
    t.server("500 What?\r\n");
    assert_eq!(t.ev(), ["Error Rejected 500"]);
    assert_eq!(t.sent(), "QUIT\r\n");
}

#[test]
fn hello_name_is_sanitised() {
    let mut c = config();
    c.hello_name = "bad name\r\n".into();
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    assert_eq!(t.sent(), "EHLO bad-name--\r\n");
}

// ----- STARTTLS -----

#[test]
fn starttls_required_upgrades_then_ehlo_again() {
    let mut c = config();
    c.tls = TlsPolicy::Required;
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.sent();
    t.server(&ehlo(&["PIPELINING", "STARTTLS"]));
    assert_eq!(t.sent(), "STARTTLS\r\n");
    assert_eq!(t.ev(), Vec::<String>::new());
    t.server("220 2.0.0 Ready to start TLS\r\n");
    assert_eq!(t.ev(), ["StartTls"]);
    assert!(!t.c.wants_read());
    assert_eq!(t.c.poll_timeout(), None);
    assert!(!t.c.is_tls());
    // Until the handshake is reported, the client keeps asking for it.
    assert!(matches!(
        t.c.poll(),
        Output::Instruction(Instruction::StartTls)
    ));
    assert_eq!(t.c.tls_info(), None);
    let info = TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS_AES_128_GCM_SHA256".into(),
        channel_binding: None,
    };
    t.c.tls_established(info.clone(), t.now).unwrap();
    t.pump();
    assert!(t.c.is_tls());
    assert_eq!(t.c.tls_info(), Some(&info));
    assert_eq!(t.sent(), "EHLO client.example\r\n");
    // STARTTLS advertised again (a confused server) is not used again.
    t.server(&ehlo(&["PIPELINING", "STARTTLS"]));
    assert_eq!(t.ev(), ["Ready"]);
    assert_eq!(t.sent(), "");
    assert_eq!(
        t.c.tls_established(TlsInfo::default(), t.now),
        Err(Misuse::NotStartingTls)
    );
}

#[test]
fn starttls_required_but_not_offered() {
    let mut c = config();
    c.tls = TlsPolicy::Required;
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.sent();
    t.server(&ehlo(&["PIPELINING"]));
    assert_eq!(t.ev(), ["Error TlsUnavailable"]);
    assert_eq!(t.sent(), "QUIT\r\n", "no mail in clear text");
    assert!(!t.c.is_ready());
    assert_eq!(t.c.send_mail(&env(&["b@c"]), t.now), Err(Misuse::Closed));
    t.server("221 bye\r\n");
    assert_eq!(t.ev(), ["Closed"]);
}

#[test]
fn starttls_required_but_refused() {
    let mut c = config();
    c.tls = TlsPolicy::Required;
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.server(&ehlo(&["STARTTLS"]));
    assert_eq!(t.sent(), "EHLO client.example\r\nSTARTTLS\r\n");
    t.server("454 4.7.0 TLS not available\r\n");
    assert_eq!(t.ev(), ["Error TlsRefused 454"]);
    assert_eq!(t.sent(), "QUIT\r\n");
}

#[test]
fn starttls_required_after_helo_fallback() {
    let mut c = config();
    c.tls = TlsPolicy::Required;
    let mut t = T::new(c);
    t.server("220 mx\r\n502 no\r\n250 mx\r\n");
    assert_eq!(t.ev(), ["Error TlsUnavailable"]);
}

#[test]
fn starttls_opportunistic() {
    // Refused: go on in clear text.
    let mut c = config();
    c.tls = TlsPolicy::Opportunistic;
    let mut t = T::new(c.clone());
    t.server("220 mx\r\n");
    t.server(&ehlo(&["STARTTLS"]));
    assert_eq!(t.sent(), "EHLO client.example\r\nSTARTTLS\r\n");
    t.server("454 4.7.0 Not now\r\n");
    assert_eq!(t.ev(), ["Ready"]);
    assert!(!t.c.is_tls());
    // Not offered: go on in clear text.
    let t = T::ready(c.clone(), &["PIPELINING"]);
    assert!(!t.c.is_tls());
    // Offered: used.
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.server(&ehlo(&["STARTTLS"]));
    t.server("220 go ahead\r\n");
    assert_eq!(t.ev(), ["StartTls"]);
}

#[test]
fn starttls_policy_none_and_implicit_tls() {
    let mut t = T::ready(config(), &["STARTTLS"]);
    assert_eq!(t.sent(), "");
    let mut c = config();
    c.tls = TlsPolicy::Required;
    c.implicit_tls = true;
    let t = T::ready(c, &["PIPELINING"]);
    assert!(t.c.is_tls());
}

#[test]
fn starttls_response_injection_is_an_error() {
    let mut c = config();
    c.tls = TlsPolicy::Required;
    // In the same packet as the 220.
    let mut t = T::new(c.clone());
    t.server("220 mx\r\n");
    t.server(&ehlo(&["STARTTLS"]));
    t.sent();
    t.server("220 go ahead\r\n250 injected\r\n");
    assert_eq!(t.ev(), ["Error TlsInjection", "Closed"]);
    assert_eq!(t.sent(), "");
    // In a later packet, before the handshake.
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.server(&ehlo(&["STARTTLS"]));
    t.server("220 go ahead\r\n");
    assert_eq!(t.ev(), ["StartTls"]);
    t.server("250 injected\r\n");
    assert_eq!(t.ev(), ["Error TlsInjection", "Closed"]);
    assert_eq!(
        t.c.tls_established(TlsInfo::default(), t.now),
        Err(Misuse::NotStartingTls)
    );
}

#[test]
fn tls_failed_closes() {
    let mut c = config();
    c.tls = TlsPolicy::Required;
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.server(&ehlo(&["STARTTLS"]));
    t.server("220 go ahead\r\n");
    t.ev();
    t.sent();
    t.c.tls_failed(t.now);
    t.pump();
    assert_eq!(t.ev(), ["Error TlsFailed", "Closed"]);
    assert_eq!(t.sent(), "");
}

// ----- AUTH -----

fn auth_config(mechs: &[Mechanism]) -> ClientConfig {
    let mut c = config();
    let mut a = ClientAuth::new("bob", "secret");
    a.mechanisms = mechs.to_vec();
    c.auth = Some(a);
    c.allow_plaintext_auth = true;
    c
}

fn authenticating(c: ClientConfig, keywords: &[&str]) -> T {
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.sent();
    t.server(&ehlo(keywords));
    t
}

#[test]
fn auth_plain_success() {
    let mut t = authenticating(
        auth_config(&[Mechanism::Plain, Mechanism::Login]),
        &["AUTH LOGIN PLAIN"],
    );
    assert_eq!(t.sent(), "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    assert!(!t.c.is_ready());
    t.server("235 2.7.0 OK\r\n");
    assert_eq!(t.ev(), ["Authenticated", "Ready"]);
    assert!(t.c.is_authenticated());
}

#[test]
fn auth_plain_failure() {
    let mut t = authenticating(auth_config(&[Mechanism::Plain]), &["AUTH PLAIN"]);
    t.sent();
    t.server("535 5.7.8 Authentication credentials invalid\r\n");
    assert_eq!(t.ev(), ["Error AuthFailed 535"]);
    assert_eq!(t.sent(), "QUIT\r\n");
    assert!(!t.c.is_authenticated());
}

#[test]
fn auth_login_success_and_failure() {
    let mut t = authenticating(
        auth_config(&[Mechanism::Login, Mechanism::Plain]),
        &["AUTH PLAIN LOGIN"],
    );
    assert_eq!(t.sent(), "AUTH LOGIN\r\n");
    t.server("334 VXNlcm5hbWU6\r\n");
    assert_eq!(t.sent(), "Ym9i\r\n");
    t.server("334 UGFzc3dvcmQ6\r\n");
    assert_eq!(t.sent(), "c2VjcmV0\r\n");
    t.server("235 2.7.0 OK\r\n");
    assert_eq!(t.ev(), ["Authenticated", "Ready"]);

    let mut t = authenticating(auth_config(&[Mechanism::Login]), &["AUTH=LOGIN"]);
    assert_eq!(t.sent(), "AUTH LOGIN\r\n");
    t.server("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n");
    assert_eq!(t.sent(), "Ym9i\r\nc2VjcmV0\r\n");
    t.server("535 5.7.8 no\r\n");
    assert_eq!(t.ev(), ["Error AuthFailed 535"]);
    // A third challenge is a protocol fault.
    let mut t = authenticating(auth_config(&[Mechanism::Login]), &["AUTH LOGIN"]);
    t.server("334 a\r\n334 b\r\n334 c\r\n");
    assert_eq!(t.ev(), ["Error Unexpected 334", "Closed"]);
}

#[test]
fn auth_plain_without_initial_response_when_too_long() {
    let mut c = auth_config(&[Mechanism::Plain]);
    c.auth.as_mut().unwrap().password = smtp_proto::sasl::Secret::new("p".repeat(400));
    let mut t = authenticating(c, &["AUTH PLAIN"]);
    assert_eq!(t.sent(), "AUTH PLAIN\r\n");
    t.server("334 \r\n");
    let line = t.sent();
    assert!(line.len() > 500 && line.ends_with("\r\n") && !line.contains(' '));
    t.server("235 ok\r\n");
    assert_eq!(t.ev(), ["Authenticated", "Ready"]);
}

#[test]
fn auth_not_offered_or_not_over_plaintext() {
    let mut t = authenticating(auth_config(&[Mechanism::Plain]), &["AUTH CRAM-MD5"]);
    assert_eq!(t.ev(), ["Error AuthUnavailable"]);
    assert_eq!(t.sent(), "QUIT\r\n");

    let mut c = auth_config(&[Mechanism::Plain]);
    c.allow_plaintext_auth = false;
    let mut t = authenticating(c, &["AUTH PLAIN"]);
    assert_eq!(t.ev(), ["Error AuthNeedsTls"]);
    assert_eq!(t.sent(), "QUIT\r\n", "no credentials in clear text");
}

#[test]
fn auth_after_starttls() {
    let mut c = auth_config(&[Mechanism::Plain]);
    c.allow_plaintext_auth = false;
    c.tls = TlsPolicy::Required;
    let mut t = authenticating(c, &["STARTTLS", "AUTH PLAIN"]);
    assert_eq!(t.sent(), "STARTTLS\r\n");
    t.server("220 go\r\n");
    t.c.tls_established(TlsInfo::default(), t.now).unwrap();
    t.pump();
    assert_eq!(t.sent(), "EHLO client.example\r\n");
    t.server(&ehlo(&["AUTH PLAIN"]));
    assert_eq!(t.sent(), "AUTH PLAIN AGJvYgBzZWNyZXQ=\r\n");
    t.server("235 ok\r\n");
    assert_eq!(t.ev(), ["StartTls", "Authenticated", "Ready"]);
}

// ----- transactions -----

#[test]
fn pipelined_data_with_a_refused_recipient() {
    let mut t = T::ready(config(), &["PIPELINING", "8BITMIME"]);
    t.mail(&env(&[
        "b@example.net",
        "nobody@example.net",
        "c@example.net",
    ]));
    // One flight, up to DATA.
    assert_eq!(
        t.sent(),
        "MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\n\
         RCPT TO:<nobody@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
    );
    // Body pushed early waits for the 354.
    t.body(b"Subject: x\r\n\r\n.hidden\r\n");
    assert_eq!(t.sent(), "");
    t.server("250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 No such user\r\n250 2.1.5 OK\r\n");
    assert_eq!(
        t.ev(),
        ["Recipient 0 250", "Recipient 1 550", "Recipient 2 250"]
    );
    assert_eq!(t.sent(), "");
    t.server("354 go ahead\r\n");
    assert_eq!(t.ev(), ["SendBody"]);
    assert_eq!(t.sent(), "Subject: x\r\n\r\n..hidden\r\n");
    t.body(b"last line");
    t.end();
    assert_eq!(t.sent(), "last line\r\n.\r\n");
    assert!(!t.c.is_ready());
    assert_eq!(t.c.push_body(b"more", t.now), Err(Misuse::NoBody));
    t.server("250 2.0.0 Queued as X\r\n");
    assert_eq!(t.ev(), ["Accepted None 250"]);
    assert!(t.c.is_ready());
    t.quit();
    assert_eq!(t.sent(), "QUIT\r\n");
    t.server("221 2.0.0 Bye\r\n");
    assert_eq!(t.ev(), ["Closed"]);
}

#[test]
fn lock_step_without_pipelining() {
    let mut t = T::ready(config(), &["8BITMIME"]);
    t.mail(&env(&["b@example.net", "c@example.net"]));
    assert_eq!(t.sent(), "MAIL FROM:<alice@example.org>\r\n");
    t.body(b"hello\r\n");
    t.end();
    assert_eq!(t.sent(), "");
    t.server("250 OK\r\n");
    assert_eq!(t.sent(), "RCPT TO:<b@example.net>\r\n");
    t.server("250 OK\r\n");
    assert_eq!(t.sent(), "RCPT TO:<c@example.net>\r\n");
    t.server("250 OK\r\n");
    assert_eq!(t.sent(), "DATA\r\n");
    t.server("354 go\r\n");
    assert_eq!(t.sent(), "hello\r\n.\r\n");
    t.server("250 OK\r\n");
    assert_eq!(
        t.ev(),
        [
            "Recipient 0 250",
            "Recipient 1 250",
            "SendBody",
            "Accepted None 250"
        ]
    );
}

#[test]
fn a_reply_too_early_is_unexpected() {
    // Lock-step: a reply to a command not sent yet (in the same packet as
    // the MAIL reply) cannot be genuine.
    let mut t = T::ready(config(), &[]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n250 OK\r\n");
    assert_eq!(t.sent(), "MAIL FROM:<alice@example.org>\r\n");
    assert_eq!(t.ev(), ["Error Unexpected 250", "Closed"]);
    // Unsolicited while idle.
    let mut t = T::ready(config(), &[]);
    t.server("250 surprise\r\n");
    assert_eq!(t.ev(), ["Error Unexpected 250", "Closed"]);
}

#[test]
fn all_recipients_refused_pipelined_354_gets_an_empty_body() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["x@example.net", "y@example.net"]));
    t.sent();
    t.body(b"secret body\r\n");
    t.end();
    t.server("250 OK\r\n550 5.1.1 no\r\n451 4.3.0 later\r\n");
    assert_eq!(t.ev(), ["Recipient 0 550", "Recipient 1 451"]);
    t.server("354 go\r\n");
    assert_eq!(t.sent(), ".\r\n", "no body after all recipients failed");
    t.server("554 5.5.1 No valid recipients\r\n");
    assert_eq!(t.ev(), ["Rejected None 451"]);
    assert_eq!(t.sent(), "RSET\r\n");
    t.server("250 flushed\r\n");
    assert!(t.c.is_ready());
    // A server that accepts the empty message after refusing everyone is at fault.
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["x@example.net"]));
    t.server("250 OK\r\n550 no\r\n354 go\r\n250 accepted?\r\n");
    assert_eq!(
        t.ev(),
        ["Recipient 0 550", "Error Unexpected 250", "Closed"]
    );
}

#[test]
fn all_recipients_refused_pipelined_data_refused() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["x@example.net"]));
    t.sent();
    t.server("250 OK\r\n550 no\r\n554 5.5.1 No valid recipients\r\n");
    assert_eq!(t.ev(), ["Recipient 0 550", "Rejected None 550"]);
    assert_eq!(t.sent(), "RSET\r\n");
    assert_eq!(t.c.push_body(b"x", t.now), Err(Misuse::NoBody));
    // Pipelined: the next transaction follows RSET at once.
    t.mail(&env(&["b@example.net"]));
    assert_eq!(
        t.sent(),
        "MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    );
    t.server("250 flushed\r\n250 OK\r\n250 OK\r\n354 go\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250", "SendBody"]);
}

#[test]
fn all_recipients_refused_lock_step_sends_no_data() {
    let mut t = T::ready(config(), &[]);
    t.mail(&env(&["x@example.net"]));
    t.server("250 OK\r\n");
    t.server("550 no\r\n");
    assert_eq!(
        t.sent(),
        "MAIL FROM:<alice@example.org>\r\nRCPT TO:<x@example.net>\r\nRSET\r\n"
    );
    assert_eq!(t.ev(), ["Recipient 0 550", "Rejected None 550"]);
    // Lock-step: the next MAIL waits for the RSET reply.
    t.mail(&env(&["b@example.net"]));
    assert_eq!(t.sent(), "");
    t.server("250 flushed\r\n");
    assert_eq!(t.sent(), "MAIL FROM:<alice@example.org>\r\n");
}

#[test]
fn mail_refused() {
    // Lock-step: no RCPT is sent, no RSET needed.
    let mut t = T::ready(config(), &[]);
    t.mail(&env(&["b@example.net"]));
    t.server("550 5.7.1 Sender refused\r\n");
    assert_eq!(t.sent(), "MAIL FROM:<alice@example.org>\r\n");
    assert_eq!(t.ev(), ["Rejected None 550"]);
    assert!(t.c.is_ready());
    // Pipelined: the RCPT and DATA refusals are absorbed, not reported.
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net", "c@example.net"]));
    t.sent();
    t.server("550 5.7.1 Sender refused\r\n503 5.5.1 need MAIL\r\n503 need MAIL\r\n");
    assert_eq!(t.ev(), Vec::<String>::new());
    t.server("503 5.5.1 need RCPT\r\n");
    assert_eq!(t.ev(), ["Rejected None 550"]);
    assert_eq!(t.sent(), "");
    // ... but an accepted RCPT after a refused MAIL is a fault.
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("550 no\r\n250 OK\r\n");
    assert_eq!(t.ev(), ["Error Unexpected 250", "Closed"]);
}

#[test]
fn data_refused() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.sent();
    t.body(b"x\r\n");
    t.server("250 OK\r\n250 OK\r\n451 4.3.0 Try later\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250", "Rejected None 451"]);
    assert_eq!(t.sent(), "RSET\r\n");
    assert_eq!(t.c.end_body(t.now), Err(Misuse::NoBody));
}

#[test]
fn message_refused_after_the_body() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n250 OK\r\n354 go\r\n");
    t.end();
    assert!(t.sent().ends_with("DATA\r\n.\r\n"));
    t.server("552 5.3.4 Too big\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250", "SendBody", "Rejected None 552"]);
    assert_eq!(
        t.sent(),
        "",
        "the end of data ends the transaction: no RSET"
    );
    assert!(t.c.is_ready());
}

#[test]
fn body_crlf_across_pushes() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n250 OK\r\n354 go\r\n");
    t.sent();
    for piece in [
        &b"."[..],
        b"a\r",
        b"\n",
        b".",
        b"b\r",
        b"\n.",
        b"\r\n",
        b"x\ny\r",
    ] {
        t.body(piece);
    }
    t.end();
    assert_eq!(t.sent(), "..a\r\n..b\r\n..\r\nx\ny\r\r\n.\r\n");
}

#[test]
fn empty_body() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.end();
    t.server("250 OK\r\n250 OK\r\n354 go\r\n");
    assert!(t.sent().ends_with("DATA\r\n.\r\n"));
}

#[test]
fn bdat_pipelined() {
    let mut c = config();
    c.chunk_size = 10;
    let mut t = T::ready(c, &["PIPELINING", "CHUNKING"]);
    t.mail(&env(&["b@example.net"]));
    assert_eq!(
        t.sent(),
        "MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\n"
    );
    t.body(b"0123456789abcdefghij.\r\n.xy");
    assert_eq!(t.sent(), "", "no chunk before the RCPT replies");
    t.server("250 OK\r\n250 OK\r\n");
    assert_eq!(t.sent(), "BDAT 10\r\n0123456789BDAT 10\r\nabcdefghij");
    t.end();
    assert_eq!(t.sent(), "BDAT 6 LAST\r\n.\r\n.xy");
    t.server("250 10 octets\r\n250 20 octets\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250", "SendBody"]);
    t.server("250 2.0.0 Queued\r\n");
    assert_eq!(t.ev(), ["Accepted None 250"]);
}

#[test]
fn bdat_lock_step_and_empty_last() {
    let mut c = config();
    c.chunk_size = 4;
    let mut t = T::ready(c, &["CHUNKING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n");
    t.server("250 OK\r\n");
    t.sent();
    t.body(b"abcdefgh");
    assert_eq!(t.sent(), "BDAT 4\r\nabcd");
    t.end();
    assert_eq!(t.sent(), "");
    t.server("250 4 octets\r\n");
    assert_eq!(t.sent(), "BDAT 4\r\nefgh");
    t.server("250 8 octets\r\n");
    assert_eq!(t.sent(), "BDAT 0 LAST\r\n");
    t.server("250 Queued\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250", "SendBody", "Accepted None 250"]);
}

#[test]
fn bdat_chunk_refused() {
    let mut c = config();
    c.chunk_size = 4;
    let mut t = T::ready(c, &["PIPELINING", "CHUNKING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n250 OK\r\n");
    t.sent();
    t.body(b"abcdefgh");
    assert_eq!(t.sent(), "BDAT 4\r\nabcdBDAT 4\r\nefgh");
    t.server("552 5.3.4 Too big\r\n");
    assert_eq!(t.c.push_body(b"ijkl", t.now), Err(Misuse::NoBody));
    t.server("503 5.5.1 No transaction\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250", "SendBody", "Rejected None 552"]);
    assert_eq!(t.sent(), "RSET\r\n");
}

#[test]
fn binarymime_needs_bdat() {
    let mut e = env(&["b@example.net"]);
    e.body = Some(BodyType::BinaryMime);
    let mut t = T::ready(config(), &["PIPELINING", "8BITMIME"]);
    assert_eq!(
        t.c.send_mail(&e, t.now),
        Err(Misuse::Unsupported("BINARYMIME"))
    );
    assert_eq!(t.sent(), "");
    let mut c = config();
    c.chunking = false; // BINARYMIME still uses BDAT
    let mut t = T::ready(c, &["PIPELINING", "8BITMIME", "CHUNKING", "BINARYMIME"]);
    t.mail(&e);
    t.server("250 OK\r\n250 OK\r\n");
    t.body(b"\x00\x01\r\n.\n");
    t.end();
    assert_eq!(
        t.sent(),
        "MAIL FROM:<alice@example.org> BODY=BINARYMIME\r\nRCPT TO:<b@example.net>\r\nBDAT 6 LAST\r\n\x00\x01\r\n.\n"
    );
    // Without chunking in the config, 8BITMIME goes by DATA.
    let mut e = env(&["b@example.net"]);
    e.body = Some(BodyType::EightBitMime);
    t.server("250 OK\r\n");
    t.mail(&e);
    assert!(
        t.sent()
            .ends_with("BODY=8BITMIME\r\nRCPT TO:<b@example.net>\r\nDATA\r\n")
    );
}

#[test]
fn lmtp_per_recipient_results() {
    let mut c = config();
    c.lmtp = true;
    let mut t = T::new(c);
    t.server("220 lmtp\r\n");
    t.server(&ehlo(&["PIPELINING", "ENHANCEDSTATUSCODES"]));
    assert_eq!(t.ev(), ["Ready"]);
    t.sent();
    t.mail(&env(&["a@x", "nobody@x", "full@x", "b@x"]));
    t.body(b"hi\r\n");
    t.end();
    t.server("250 OK\r\n250 OK\r\n550 5.1.1 no\r\n250 OK\r\n250 OK\r\n354 go\r\n");
    assert!(t.sent().ends_with("DATA\r\nhi\r\n.\r\n"));
    t.server("250 2.0.0 a delivered\r\n452 4.2.2 full is full\r\n");
    assert_eq!(
        t.ev(),
        [
            "Recipient 0 250",
            "Recipient 1 550",
            "Recipient 2 250",
            "Recipient 3 250",
            "SendBody",
            "Accepted Some(0) 250",
            "Rejected Some(2) 452"
        ]
    );
    assert!(!t.c.is_ready());
    t.server("250 2.0.0 b delivered\r\n");
    assert_eq!(t.ev(), ["Accepted Some(3) 250"]);
    assert!(t.c.is_ready());
}

#[test]
fn lmtp_bdat_last_waits_and_gets_one_reply_per_recipient() {
    let mut c = config();
    c.lmtp = true;
    c.chunk_size = 2;
    let mut t = T::new(c);
    t.server("220 lmtp\r\n");
    t.server(&ehlo(&["PIPELINING", "CHUNKING"]));
    t.sent();
    t.ev();
    t.mail(&env(&["a@x", "b@x"]));
    t.server("250 OK\r\n250 OK\r\n250 OK\r\n");
    t.body(b"abc");
    t.end();
    assert_eq!(
        t.sent(),
        "MAIL FROM:<alice@example.org>\r\nRCPT TO:<a@x>\r\nRCPT TO:<b@x>\r\nBDAT 2\r\nab"
    );
    t.server("250 2 octets\r\n");
    assert_eq!(t.sent(), "BDAT 1 LAST\r\nc");
    t.server("250 a ok\r\n450 b busy\r\n");
    assert_eq!(
        t.ev(),
        [
            "Recipient 0 250",
            "Recipient 1 250",
            "SendBody",
            "Accepted Some(0) 250",
            "Rejected Some(1) 450"
        ]
    );
}

#[test]
fn multi_line_and_enhanced_codes() {
    let mut t = T::ready(config(), &["PIPELINING", "ENHANCEDSTATUSCODES"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 2.1.0 OK\r\n550-5.1.1 The email account that you tried to reach\r\n550-5.1.1 does not exist.\r\n550 5.1.1 Please try again.\r\n");
    let Output::Event(ClientEvent::Recipient { index: 0, reply }) = t.events.remove(0) else {
        panic!()
    };
    assert_eq!(reply.code(), 550);
    assert_eq!(reply.enhanced(), Some(EnhancedCode::new(5, 1, 1)));
    assert_eq!(
        reply.text(),
        "The email account that you tried to reach\ndoes not exist.\nPlease try again."
    );
    // Mixed codes across lines are malformed.
    let mut t = T::ready(config(), &[]);
    t.mail(&env(&["b@example.net"]));
    t.server("250-OK\r\n251 OK\r\n");
    assert_eq!(t.ev(), ["Error Malformed MixedCodes", "Closed"]);
}

#[test]
fn overlong_reply_is_an_error_and_memory_is_bounded() {
    let mut c = config();
    c.max_reply_len = 1000;
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.sent();
    // An endless EHLO line: the client never holds more than the limit.
    let chunk = "250-".to_owned() + &"x".repeat(300);
    let mut fed = 0;
    for _ in 0..100 {
        assert!(t.c.read_buf().len() <= 1001);
        fed += t.c.receive(chunk.as_bytes(), t.now);
        t.pump();
        if t.c.is_closed() {
            break;
        }
    }
    assert!(fed < 2000);
    assert_eq!(t.ev(), ["Error Malformed TooLong", "Closed"]);
    // A multi-line reply whose lines are each short but total too much.
    let mut c = config();
    c.max_reply_len = 1000;
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    for _ in 0..100 {
        t.server("250-PIPELINING\r\n");
    }
    assert_eq!(t.ev(), ["Error Malformed TooLong", "Closed"]);
}

#[test]
fn malformed_replies() {
    // (Text that is not UTF-8 is not malformed: see reply.rs's tests.)
    let bad: [&[u8]; 6] = [
        b"2\r\n",
        b"25x OK\r\n",
        b"250+OK\r\n",
        b"150 OK\r\n",
        b"650 OK\r\n",
        b"\r\n",
    ];
    for bad in bad {
        let mut t = T::ready(config(), &[]);
        t.mail(&env(&["b@example.net"]));
        t.c.receive(bad, t.now);
        t.pump();
        let ev = t.ev();
        assert!(ev[0].starts_with("Error Malformed"), "{bad:?}: {ev:?}");
        assert_eq!(ev[1], "Closed");
    }
}

#[test]
fn unexpected_codes() {
    // 354 to MAIL.
    let mut t = T::ready(config(), &[]);
    t.mail(&env(&["b@example.net"]));
    t.server("354 go\r\n");
    assert_eq!(t.ev(), ["Error Unexpected 354", "Closed"]);
    // 250 to DATA.
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n250 OK\r\n250 OK\r\n");
    assert_eq!(
        t.ev(),
        ["Recipient 0 250", "Error Unexpected 250", "Closed"]
    );
    // 220 to EHLO.
    let mut t = T::new(config());
    t.server("220 mx\r\n220 mx\r\n");
    assert_eq!(t.ev(), ["Error Unexpected 220", "Closed"]);
    // 354 after the body.
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.end();
    t.server("250 OK\r\n250 OK\r\n354 go\r\n354 again\r\n");
    assert_eq!(
        t.ev(),
        [
            "Recipient 0 250",
            "SendBody",
            "Error Unexpected 354",
            "Closed"
        ]
    );
    // RSET refused.
    let mut t = T::ready(config(), &[]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n");
    t.server("550 no\r\n");
    t.server("500 what\r\n");
    assert_eq!(
        t.ev(),
        ["Recipient 0 550", "Rejected None 550", "Error Rejected 500"]
    );
    assert!(t.sent().ends_with("RSET\r\nQUIT\r\n"));
}

#[test]
fn service_closing_at_any_point() {
    // The scripted server up to a point, then 421.
    let steps: &[&str] = &[
        "220 mx\r\n",
        "250-mx\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 AUTH PLAIN\r\n",
        "220 go\r\n",
        "TLS",
        "250-mx\r\n250-PIPELINING\r\n250 AUTH PLAIN\r\n",
        "235 ok\r\n",
        "MAIL",
        "250 OK\r\n",
        "250 OK\r\n",
        "354 go\r\n",
        "BODY",
        "250 OK\r\n",
        "QUIT",
    ];
    for cut in 0..steps.len() {
        let mut c = auth_config(&[Mechanism::Plain]);
        c.tls = TlsPolicy::Required;
        let mut t = T::new(c);
        for step in &steps[..cut] {
            match *step {
                "TLS" => t.c.tls_established(TlsInfo::default(), t.now).unwrap(),
                "MAIL" => t.c.send_mail(&env(&["b@example.net"]), t.now).unwrap(),
                "BODY" => t.c.end_body(t.now).unwrap(),
                "QUIT" => t.c.quit(t.now).unwrap(),
                s => {
                    t.c.receive(s.as_bytes(), t.now);
                }
            }
            t.pump();
        }
        assert!(!t.ev().iter().any(|e| e.starts_with("Error")), "cut {cut}");
        t.sent();
        if steps.get(cut) == Some(&"TLS") {
            // Mid-handshake there is no SMTP to read.
            continue;
        }
        t.server("421 4.3.2 Shutting down\r\n");
        let ev = t.ev();
        if steps[..cut].last() == Some(&"QUIT") {
            assert_eq!(ev, ["Closed"], "cut {cut}");
        } else {
            assert_eq!(ev, ["Error Closing 421", "Closed"], "cut {cut}");
        }
        assert_eq!(t.sent(), "", "cut {cut}");
        assert!(t.c.is_closed());
    }
}

#[test]
fn timeouts() {
    let mut t = T::new(config());
    let start = t.now;
    assert_eq!(t.c.poll_timeout(), Some(start + Duration::from_secs(300)));
    t.advance(Duration::from_secs(299));
    assert_eq!(t.ev(), Vec::<String>::new());
    t.advance(Duration::from_secs(1));
    assert_eq!(t.ev(), ["Error Timeout", "Closed"]);
    assert_eq!(t.c.poll_timeout(), None);

    // DATA initiation: 2 minutes; the end of data: 10 minutes.
    let mut t = T::ready(config(), &[]);
    assert_eq!(t.c.poll_timeout(), None, "idle: no deadline");
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n");
    t.server("250 OK\r\n");
    assert_eq!(t.sent().lines().last(), Some("DATA"));
    assert_eq!(t.c.poll_timeout(), Some(t.now + Duration::from_secs(120)));
    t.advance(Duration::from_secs(60));
    t.server("354 go\r\n");
    assert_eq!(t.c.poll_timeout(), None, "the body is the caller's");
    t.end();
    assert_eq!(t.c.poll_timeout(), Some(t.now + Duration::from_secs(600)));
    t.advance(Duration::from_secs(599));
    t.server("250 OK\r\n");
    assert_eq!(t.c.poll_timeout(), None);
    assert!(t.c.is_ready());

    // Configurable, and early calls are harmless.
    let mut c = config();
    c.timeouts.command = Duration::from_secs(5);
    let mut t = T::ready(c, &[]);
    t.mail(&env(&["b@example.net"]));
    t.c.handle_timeout(t.now);
    t.advance(Duration::from_secs(4));
    assert_eq!(t.ev(), Vec::<String>::new());
    t.advance(Duration::from_secs(1));
    assert_eq!(t.ev(), ["Error Timeout", "Closed"]);

    // Body bytes that cannot be written time out after a data block.
    let mut c = config();
    c.max_pending_output = 100;
    let mut t = T::ready(c, &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n250 OK\r\n354 go\r\n");
    t.sent();
    assert_eq!(t.c.push_body(&[b'x'; 150], t.now), Ok(100));
    assert_eq!(t.c.push_body(b"x", t.now), Ok(0));
    assert!(!t.c.wants_body());
    assert_eq!(t.c.poll_timeout(), Some(t.now + Duration::from_secs(180)));
    t.now += Duration::from_secs(180);
    t.c.handle_timeout(t.now);
    t.pump();
    assert_eq!(
        t.ev(),
        ["Recipient 0 250", "SendBody", "Error Timeout", "Closed"]
    );
}

#[test]
fn premature_eof() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n");
    t.c.receive_eof(t.now);
    t.pump();
    assert_eq!(t.ev(), ["Error UnexpectedEof", "Closed"]);
    // While idle too.
    let mut t = T::ready(config(), &[]);
    t.c.receive_eof(t.now);
    t.pump();
    assert_eq!(t.ev(), ["Error UnexpectedEof", "Closed"]);
    // After QUIT it is the normal end, 221 or not.
    let mut t = T::ready(config(), &[]);
    t.quit();
    t.c.receive_eof(t.now);
    t.pump();
    assert_eq!(t.ev(), ["Closed"]);
}

#[test]
fn quit_mid_transaction_closes_at_once() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&env(&["b@example.net"]));
    t.server("250 OK\r\n250 OK\r\n354 go\r\n");
    t.sent();
    t.c.push_body(b"partial", t.now).unwrap();
    t.quit();
    assert_eq!(t.sent(), "", "neither the rest of the body nor QUIT");
    assert_eq!(t.ev(), ["Recipient 0 250", "SendBody", "Closed"]);
    assert_eq!(t.c.quit(t.now), Err(Misuse::Closed));
}

#[test]
fn quit_before_ready_waits_for_the_greeting() {
    let mut t = T::new(config());
    t.quit();
    assert_eq!(t.sent(), "");
    t.server("220 mx\r\n");
    assert_eq!(t.sent(), "QUIT\r\n");
    t.server("221 bye\r\n");
    assert_eq!(t.ev(), ["Closed"]);
}

#[test]
fn usage_errors() {
    let mut t = T::new(config());
    let e = env(&["b@example.net"]);
    assert_eq!(t.c.send_mail(&e, t.now), Err(Misuse::NotReady));
    assert_eq!(t.c.push_body(b"x", t.now), Err(Misuse::NoBody));
    assert_eq!(t.c.end_body(t.now), Err(Misuse::NoBody));
    assert_eq!(
        t.c.tls_established(TlsInfo::default(), t.now),
        Err(Misuse::NotStartingTls)
    );
    t.server("220 mx\r\n");
    t.server(&ehlo(&["PIPELINING", "SIZE 100"]));
    t.sent();
    t.mail(&e);
    assert_eq!(t.c.send_mail(&e, t.now), Err(Misuse::NotReady));
    t.end();
    assert_eq!(t.c.end_body(t.now), Err(Misuse::NoBody));
    let mut t = T::ready(config(), &["SIZE 100"]);
    assert_eq!(
        t.c.send_mail(&Envelope::new(None, Vec::<String>::new()), t.now),
        Err(Misuse::NoRecipients)
    );
    let mut big = env(&["b@example.net"]);
    big.size = Some(101);
    assert_eq!(
        t.c.send_mail(&big, t.now),
        Err(Misuse::TooBig { limit: 100 })
    );
    for bad in ["no-at", "a@b\r\nRSET", "<a@b>", "a b@c", ""] {
        assert_eq!(
            t.c.send_mail(&env(&[bad]), t.now),
            Err(Misuse::InvalidAddress(bad.into())),
            "{bad:?}"
        );
    }
    let mut e = env(&["b@example.net"]);
    e.requiretls = true;
    assert_eq!(
        t.c.send_mail(&e, t.now),
        Err(Misuse::Unsupported("REQUIRETLS"))
    );
    let mut e = env(&["b@example.net"]);
    e.body = Some(BodyType::EightBitMime);
    assert_eq!(
        t.c.send_mail(&e, t.now),
        Err(Misuse::Unsupported("8BITMIME"))
    );
    assert_eq!(t.sent(), "", "nothing was sent");
    assert!(t.c.is_ready());
}

#[test]
fn smtputf8_only_when_offered() {
    let utf8 = Envelope::new(Some("jörg@bücher.example"), ["b@example.net"]);
    let mut t = T::ready(config(), &["PIPELINING", "8BITMIME"]);
    assert_eq!(
        t.c.send_mail(&utf8, t.now),
        Err(Misuse::Unsupported("SMTPUTF8"))
    );
    let rcpt8 = env(&["用户@例子.广告"]);
    assert_eq!(
        t.c.send_mail(&rcpt8, t.now),
        Err(Misuse::Unsupported("SMTPUTF8"))
    );
    assert_eq!(t.sent(), "");
    let mut t = T::ready(config(), &["PIPELINING", "SMTPUTF8"]);
    t.mail(&utf8);
    assert_eq!(
        t.sent(),
        "MAIL FROM:<jörg@bücher.example> SMTPUTF8\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    );
}

#[test]
fn parameters_only_when_advertised() {
    let mut e = env(&["b@example.net"]);
    e.size = Some(42);
    e.body = Some(BodyType::SevenBit);
    e.ret = Some(Ret::Hdrs);
    e.envid = Some("id+1=x y".into());
    e.recipients.push(Recipient {
        address: "Postmaster".into(),
        notify: Some(Notify {
            success: true,
            failure: true,
            ..Notify::default()
        }),
        orcpt: Some("orig+inal@example.com".into()),
    });
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&e);
    assert_eq!(
        t.sent(),
        "MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<Postmaster>\r\nDATA\r\n"
    );
    let mut t = T::ready(config(), &["PIPELINING", "SIZE", "8BITMIME", "DSN"]);
    t.mail(&e);
    assert_eq!(
        t.sent(),
        "MAIL FROM:<alice@example.org> SIZE=42 BODY=7BIT RET=HDRS ENVID=id+2B1+3Dx+20y\r\n\
         RCPT TO:<b@example.net>\r\n\
         RCPT TO:<Postmaster> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig+2Binal@example.com\r\n\
         DATA\r\n"
    );
    // A null reverse path and REQUIRETLS under TLS.
    let mut c = config();
    c.implicit_tls = true;
    let mut t = T::ready(c, &["REQUIRETLS"]);
    let mut e = Envelope::new(None, ["b@example.net"]);
    e.requiretls = true;
    t.mail(&e);
    assert_eq!(t.sent(), "MAIL FROM:<> REQUIRETLS\r\n");
}

#[test]
fn output_is_bounded() {
    let mut c = config();
    c.max_pending_output = 1000;
    c.chunk_size = 300;
    let mut t = T::ready(c, &["PIPELINING", "CHUNKING"]);
    t.mail(&env(&["b@example.net"]));
    // Before the RCPT replies, pushes are buffered up to the limit.
    let big = vec![b'a'; 5000];
    let taken = t.c.push_body(&big, t.now).unwrap();
    assert_eq!(taken, 1000);
    assert_eq!(t.c.push_body(&big, t.now), Ok(0));
    t.pump();
    t.server("250 OK\r\n250 OK\r\n");
    // Without anyone writing, the client takes no more than the limit.
    let mut held = t.c.transmit().len();
    while let Ok(n) = t.c.push_body(&big, t.now) {
        if n == 0 {
            break;
        }
        held += n;
    }
    assert!(
        t.c.transmit().len() <= 1000 + 20,
        "{}",
        t.c.transmit().len()
    );
    assert!(held > 0);
}

#[test]
fn zero_copy_input_and_split_replies() {
    let mut t = T::new(config());
    // The greeting arrives one byte at a time through read_buf/filled.
    for &b in b"220-mx.example\r\n220 ESMTP\r\n" {
        let buf = t.c.read_buf();
        assert!(!buf.is_empty());
        buf[0] = b;
        t.c.filled(1, t.now);
        t.pump();
    }
    assert_eq!(t.sent(), "EHLO client.example\r\n");
    // A partial transmit is resumed where it stopped.
    t.server(&ehlo(&["PIPELINING"]));
    t.ev();
    t.c.send_mail(&env(&["b@example.net"]), t.now).unwrap();
    let all = t.c.transmit().to_vec();
    t.c.transmitted(5);
    assert_eq!(t.c.transmit(), &all[5..]);
    assert!(t.c.wants_write());
    t.c.transmitted(1000);
    assert!(!t.c.wants_write());
}

#[test]
fn pipelining_window() {
    let mut c = config();
    c.max_pipelined = 10;
    let mut t = T::ready(c, &["PIPELINING"]);
    let rcpts: Vec<String> = (0..25).map(|i| format!("r{i}@example.net")).collect();
    t.mail(&Envelope::new(
        Some("a@example.org"),
        rcpts.iter().map(String::as_str),
    ));
    assert_eq!(t.sent().lines().count(), 10, "MAIL and 9 RCPTs");
    t.server("250 OK\r\n250 OK\r\n");
    assert_eq!(t.sent().lines().count(), 2);
    for _ in 0..8 {
        t.server("250 OK\r\n");
    }
    let more = t.sent();
    assert_eq!(more.lines().count(), 8);
    t.server(&"250 OK\r\n".repeat(10));
    let rest = t.sent();
    assert_eq!(rest.lines().count(), 7);
    assert!(rest.starts_with("RCPT TO:<r19@example.net>\r\n"));
    assert!(rest.ends_with("RCPT TO:<r24@example.net>\r\nDATA\r\n"));
    t.server(&"250 OK\r\n".repeat(6));
    t.server("354 go\r\n");
    assert_eq!(t.ev().len(), 26, "25 recipients and SendBody");
}

#[test]
fn quit_during_starttls_closes_at_once() {
    let mut c = config();
    c.tls = TlsPolicy::Required;
    let mut t = T::new(c);
    t.server("220 mx\r\n");
    t.server(&ehlo(&["STARTTLS"]));
    assert!(t.sent().ends_with("STARTTLS\r\n"));
    t.quit();
    assert_eq!(t.ev(), ["Closed"]);
    assert_eq!(t.sent(), "", "no clear-text QUIT into a TLS handshake");
}

// ----- open transactions: recipients one by one (the relay's proxying) -----

#[test]
fn open_transaction_recipient_by_recipient() {
    let mut t = T::ready(config(), &["PIPELINING", "8BITMIME"]);
    t.c.begin_mail(
        &Envelope::new(Some("a@x.example"), Vec::<String>::new()),
        t.now,
    )
    .unwrap();
    t.pump();
    assert_eq!(t.sent(), "MAIL FROM:<a@x.example>\r\n");
    assert_eq!(
        t.c.add_recipient(&Recipient::new("b@y.example"), t.now),
        Ok(0)
    );
    t.pump();
    assert_eq!(t.sent(), "RCPT TO:<b@y.example>\r\n");
    t.server("250 2.1.0 ok\r\n250 2.1.5 ok\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250"]);
    // Nothing is judged while the transaction is open.
    assert_eq!(
        t.c.add_recipient(&Recipient::new("c@y.example"), t.now),
        Ok(1)
    );
    t.pump();
    assert_eq!(t.sent(), "RCPT TO:<c@y.example>\r\n");
    t.server("550 5.1.1 no such user\r\n");
    assert_eq!(t.ev(), ["Recipient 1 550"]);
    t.c.close_recipients(t.now).unwrap();
    t.pump();
    assert_eq!(t.sent(), "DATA\r\n");
    t.server("354 go\r\n");
    assert_eq!(t.ev(), ["SendBody"]);
    t.body(b"Subject: s\r\n\r\n.dot\r\n");
    t.end();
    assert_eq!(t.sent(), "Subject: s\r\n\r\n..dot\r\n.\r\n");
    t.server("250 2.0.0 queued\r\n");
    assert_eq!(t.ev(), ["Accepted None 250"]);
    assert!(t.c.is_ready());
}

#[test]
fn open_transaction_all_refused_then_closed_fails() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.c.begin_mail(&Envelope::new(Some("a@x.example"), ["b@y.example"]), t.now)
        .unwrap();
    t.pump();
    assert_eq!(
        t.sent(),
        "MAIL FROM:<a@x.example>\r\nRCPT TO:<b@y.example>\r\n"
    );
    t.server("250 ok\r\n450 4.2.1 try later\r\n");
    assert_eq!(t.ev(), ["Recipient 0 450"]);
    t.c.close_recipients(t.now).unwrap();
    t.pump();
    // No DATA for a transaction without recipients; the refusal is reported
    // and the server's transaction reset.
    assert_eq!(t.ev(), ["Rejected None 450"]);
    assert_eq!(t.sent(), "RSET\r\n");
    t.server("250 reset\r\n");
    assert!(t.c.is_ready());
}

#[test]
fn open_transaction_reset_and_mail_refused() {
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.c.begin_mail(
        &Envelope::new(Some("a@x.example"), Vec::<String>::new()),
        t.now,
    )
    .unwrap();
    t.pump();
    t.c.add_recipient(&Recipient::new("b@y.example"), t.now)
        .unwrap();
    t.pump();
    // Not while replies are awaited.
    assert_eq!(t.c.reset(t.now), Err(Misuse::NotReady));
    t.server("250 ok\r\n250 ok\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250"]);
    t.sent();
    t.c.reset(t.now).unwrap();
    t.pump();
    assert_eq!(t.sent(), "RSET\r\n");
    t.server("250 reset\r\n");
    // A refused MAIL ends the open transaction with its reply.
    t.c.begin_mail(
        &Envelope::new(Some("bad@x.example"), Vec::<String>::new()),
        t.now,
    )
    .unwrap();
    t.pump();
    t.server("550 5.7.1 sender refused\r\n");
    assert_eq!(t.ev(), ["Rejected None 550"]);
    assert_eq!(
        t.c.add_recipient(&Recipient::new("b@y.example"), t.now),
        Err(Misuse::NotReady)
    );
    assert!(t.c.is_ready());
    // A UTF-8 recipient needs SMTPUTF8 in the envelope.
    t.c.begin_mail(
        &Envelope::new(Some("a@x.example"), Vec::<String>::new()),
        t.now,
    )
    .unwrap();
    assert_eq!(
        t.c.add_recipient(&Recipient::new("jörg@y.example"), t.now),
        Err(Misuse::Unsupported("SMTPUTF8"))
    );
}

// ----- XFORWARD -----

#[test]
fn xforward_goes_before_mail_when_offered() {
    use smtp_proto::command::ForwardAttr;
    let facts = vec![
        (ForwardAttr::Name, Some("client.example".to_owned())),
        (ForwardAttr::Addr, Some("IPV6:2001:db8::1".to_owned())),
        (ForwardAttr::Helo, None),
        (ForwardAttr::Ident, Some("id 1".to_owned())),
    ];
    // The server lists NAME, ADDR and HELO: IDENT is left out.
    let mut t = T::ready(config(), &["PIPELINING", "XFORWARD NAME ADDR HELO"]);
    let mut e = env(&["b@example.net"]);
    e.xforward.clone_from(&facts);
    t.mail(&e);
    assert_eq!(
        t.sent(),
        "XFORWARD NAME=client.example ADDR=IPV6:2001:db8::1 HELO=[UNAVAILABLE]\r\n\
         MAIL FROM:<alice@example.org>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
    );
    // A refused XFORWARD is advice lost, not a failed transaction.
    t.server("550 5.7.0 no\r\n250 2.1.0 OK\r\n250 2.1.5 OK\r\n354 go\r\n");
    assert_eq!(t.ev(), ["Recipient 0 250", "SendBody"]);

    // Not offered: nothing is sent.
    let mut t = T::ready(config(), &["PIPELINING"]);
    t.mail(&e);
    assert!(t.sent().starts_with("MAIL FROM:"));

    // Long values are split over several lines of at most 512 octets.
    let mut t = T::ready(config(), &["PIPELINING", "XFORWARD NAME HELO IDENT"]);
    let long = "x".repeat(300);
    e.xforward = vec![
        (ForwardAttr::Name, Some(long.clone())),
        (ForwardAttr::Helo, Some(long.clone())),
        (ForwardAttr::Ident, Some("+".repeat(400))),
    ];
    t.mail(&e);
    let sent = t.sent();
    let lines: Vec<&str> = sent
        .split("\r\n")
        .filter(|l| l.starts_with("XFORWARD"))
        .collect();
    assert_eq!(lines.len(), 3, "{sent}");
    assert!(lines.iter().all(|l| l.len() + 2 <= 512), "{lines:?}");
    // The cut never splits a `+2B` escape.
    assert!(lines[2].ends_with("+2B"), "{}", lines[2]);
}
