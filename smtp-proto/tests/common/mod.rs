//! A transcript harness: client bytes in, server bytes out, with a simulated
#![allow(clippy::unwrap_used)]
//! clock and a scripted application.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use smtp_proto::command::{ForwardPath, ReversePath};
use smtp_proto::config::Config;
use smtp_proto::drive::{Instruction, Output};
use smtp_proto::reply::{EnhancedCode, Reply};
use smtp_proto::server::{Decision, Event, PeerInfo, Session, TlsInfo};

/// What the scripted application saw, in order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Log {
    pub events: Vec<String>,
    /// Completed and accepted messages.
    pub messages: Vec<Vec<u8>>,
    /// The body being received.
    pub body: Vec<u8>,
}

/// A session plus a scripted application.
pub struct Harness {
    pub s: Session,
    pub now: Instant,
    pub out: Vec<u8>,
    pub log: Log,
    /// Answer STARTTLS handshakes automatically.
    pub auto_tls: bool,
    /// Call `has_event` before every `poll` (it must be transparent).
    pub probe: bool,
    /// The last instruction `poll` returned (an instruction is a state:
    /// the log records it once, when it begins).
    pub last: Option<Instruction>,
}

/// The scripted decisions:
/// - Connect from 192.0.2.66 → 554; from 192.0.2.44 → 421.
/// - HELO/EHLO `reject.example` → 550 5.7.1.
/// - MAIL from anything containing `spammer` → 550 5.7.1.
/// - RCPT to anything starting with `nobody` → 550 5.1.1; `busy` → 450 4.2.1.
/// - AUTH user `bob` password `secret` → accept, else 535.
/// - VRFY → accept (252).
/// - Message end: LMTP recipients starting with `full` → 452 4.2.2, else accept.
pub fn decide(event: &Event<'_>) -> Decision {
    match event {
        Event::Connect { peer, .. } => match peer.remote.map(|a| a.ip().to_string()) {
            Some(ip) if ip == "192.0.2.66" => {
                Reply::new(554, EnhancedCode::new(5, 7, 1), "No service for you").into()
            }
            Some(ip) if ip == "192.0.2.44" => {
                Reply::new(421, EnhancedCode::new(4, 7, 0), "Try later").into()
            }
            _ => Decision::Accept,
        },
        Event::Helo { domain, .. } if *domain == "reject.example" => {
            Reply::new(550, EnhancedCode::new(5, 7, 1), "Go away").into()
        }
        Event::Mail {
            from: ReversePath::Mailbox(m),
            ..
        } if m.raw.contains("spammer") => {
            Reply::new(550, EnhancedCode::new(5, 7, 1), "Sender refused").into()
        }
        Event::Rcpt {
            to: ForwardPath::Mailbox(m),
            ..
        } if m.local_part.starts_with("nobody") => Reply::NO_SUCH_USER.into(),
        Event::Rcpt {
            to: ForwardPath::Mailbox(m),
            ..
        } if m.local_part.starts_with("busy") => {
            Reply::new(450, EnhancedCode::new(4, 2, 1), "Mailbox busy").into()
        }
        Event::Auth { credentials, .. } => {
            if credentials.username == "bob" && credentials.password.expose() == "secret" {
                Decision::Accept
            } else {
                Reply::AUTH_FAILED.into()
            }
        }
        _ => Decision::Accept,
    }
}

impl Harness {
    pub fn new(config: Config) -> Self {
        Self::with_peer(config, PeerInfo::new("192.0.2.1:40000".parse().unwrap()))
    }

    pub fn with_peer(config: Config, peer: PeerInfo) -> Self {
        let now = Instant::now();
        let mut h = Harness {
            s: Session::new(Arc::new(config), peer, now),
            now,
            out: Vec::new(),
            log: Log::default(),
            auto_tls: true,
            probe: false,
            last: None,
        };
        h.pump();
        h
    }

    /// Feeds bytes (all of them, draining in between), then drains.
    pub fn send(&mut self, mut bytes: &[u8]) {
        loop {
            let n = self.s.receive(bytes, self.now);
            bytes = &bytes[n..];
            self.pump();
            if bytes.is_empty() || n == 0 && !self.s.wants_read() && self.s.transmit().is_empty() {
                break;
            }
        }
    }

    /// Feeds bytes and returns what the server wrote in answer.
    pub fn exchange(&mut self, bytes: &[u8]) -> String {
        let before = self.out.len();
        self.send(bytes);
        String::from_utf8_lossy(&self.out[before..]).into_owned()
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        if let Some(t) = self.s.poll_timeout() {
            if t <= self.now {
                self.s.handle_timeout(self.now);
                self.pump();
            }
        }
    }

    pub fn eof(&mut self) {
        self.s.receive_eof(self.now);
        self.pump();
    }

    /// Drains events (answering decisions) and output until idle.
    pub fn pump(&mut self) {
        loop {
            let mut progressed = false;
            loop {
                // With `probe`, ask `has_event` first: it must agree with
                // `poll` and change nothing.
                let announced = self.probe.then(|| self.s.has_event());
                let ev = match self.s.poll() {
                    Output::Event(ev) => ev,
                    Output::Instruction(i) => {
                        assert_ne!(announced, Some(true), "has_event promised an event");
                        let new = self.last != Some(i);
                        self.last = Some(i);
                        match i {
                            Instruction::StartTls => {
                                if new {
                                    self.log.events.push("STARTTLS".into());
                                }
                                // Flush the 220 first, as a real adapter must.
                                self.flush();
                                if !self.auto_tls {
                                    break;
                                }
                                self.s
                                    .tls_established(
                                        TlsInfo {
                                            version: "TLSv1.3".into(),
                                            cipher: "TLS_AES_128_GCM_SHA256".into(),
                                            channel_binding: None,
                                        },
                                        self.now,
                                    )
                                    .unwrap();
                            }
                            Instruction::Throttle(until) => {
                                if new {
                                    self.log.events.push("THROTTLE".into());
                                }
                                // Wait out the delay (the simulated clock
                                // moves to its end), then go on.
                                self.now = self.now.max(until);
                                self.s.handle_timeout(self.now);
                            }
                            _ => break,
                        }
                        progressed = true;
                        continue;
                    }
                };
                assert_ne!(announced, Some(false), "has_event missed an event");
                progressed = true;
                let d = decide(&ev);
                self.log.events.push(describe(&ev));
                match ev {
                    Event::Body(chunk) => self.log.body.extend_from_slice(chunk),
                    Event::BodyStart { .. } | Event::MessageAborted(_) | Event::Reset => {
                        self.log.body.clear()
                    }
                    Event::MessageEnd {
                        ticket, recipients, ..
                    } => {
                        let body = std::mem::take(&mut self.log.body);
                        if self.s.config().lmtp {
                            let ds: Vec<Decision> = self
                                .lmtp_rcpts()
                                .iter()
                                .take(recipients)
                                .map(|r| {
                                    if r.starts_with("full") {
                                        Reply::new(452, EnhancedCode::new(4, 2, 2), "Mailbox full")
                                            .into()
                                    } else {
                                        Decision::Accept
                                    }
                                })
                                .collect();
                            self.s.respond_each(ticket, ds, self.now).unwrap();
                        } else {
                            self.s.respond(ticket, Decision::Accept, self.now).unwrap();
                        }
                        self.log.messages.push(body);
                    }
                    ev => {
                        if let Some(t) = ev.into_ticket() {
                            self.s.respond(t, d, self.now).unwrap();
                        }
                    }
                }
            }
            if !self.s.transmit().is_empty() {
                self.flush();
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
    }

    fn flush(&mut self) {
        let t = self.s.transmit();
        self.out.extend_from_slice(t);
        let n = t.len();
        self.s.transmitted(n);
    }

    /// Accepted RCPT local parts in this transaction, from the event log.
    fn lmtp_rcpts(&self) -> Vec<String> {
        let mut v = Vec::new();
        for e in &self.log.events {
            if let Some(r) = e.strip_prefix("RCPT ") {
                v.push(r.to_owned());
            }
            if e.starts_with("MAIL ") {
                v.clear();
            }
        }
        v.retain(|r| !r.starts_with("nobody") && !r.starts_with("busy"));
        v
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.out).into_owned()
    }
}

/// A short description of an event for the log.
pub fn describe(ev: &Event<'_>) -> String {
    match ev {
        Event::Connect { .. } => "CONNECT".into(),
        Event::Helo { kind, domain, .. } => format!("{kind:?} {domain}"),
        Event::Mail { from, .. } => match from {
            ReversePath::Null => "MAIL <>".into(),
            ReversePath::Mailbox(m) => format!("MAIL {}", m.raw),
        },
        Event::Rcpt { to, .. } => match to {
            ForwardPath::Postmaster => "RCPT Postmaster".into(),
            ForwardPath::Mailbox(m) => format!("RCPT {}", m.raw),
        },
        Event::Verify { arg, expand, .. } => format!("VERIFY {arg} {expand}"),
        Event::Auth { credentials, .. } => format!("AUTH {}", credentials.username),
        Event::Sasl { request, .. } => format!("SASL {request:?}"),
        Event::BodyStart { kind } => format!("BODYSTART {kind:?}"),
        Event::Body(_) => "BODY".into(),
        Event::MessageEnd {
            size, recipients, ..
        } => format!("END {size} {recipients}"),
        Event::MessageAborted(r) => format!("ABORTED {r:?}"),
        Event::Reset => "RESET".into(),
        Event::Violation(v) => format!("VIOLATION {v:?}"),
        Event::Closing(r) => format!("CLOSING {r:?}"),
    }
}

/// Runs a `C:`/`S:` transcript: client lines are sent one at a time, and
/// after each, the server's output so far must equal the `S:` lines seen so
/// far. Lines are CRLF-terminated; `\r`, `\n` escapes are honoured.
pub fn transcript(config: Config, script: &str) -> Harness {
    let mut h = Harness::new(config);
    let mut expected = String::new();
    for line in script.lines() {
        let line = line.trim_start();
        if let Some(c) = line.strip_prefix("C: ") {
            assert_eq!(h.output(), expected, "before sending {c:?}");
            h.send(unescape(c).as_bytes());
        } else if let Some(c) = line.strip_prefix("C+ ") {
            // raw, without CRLF
            h.send(unescape_raw(c).as_bytes());
        } else if let Some(s) = line.strip_prefix("S: ") {
            expected.push_str(s);
            expected.push_str("\r\n");
        } else if line == "C: " || line == "C:" {
            h.send(b"\r\n");
        }
    }
    assert_eq!(h.output(), expected);
    h
}

fn unescape(s: &str) -> String {
    let mut r = unescape_raw(s);
    r.push_str("\r\n");
    r
}

fn unescape_raw(s: &str) -> String {
    s.replace("\\r", "\r")
        .replace("\\n", "\n")
        .replace("\\0", "\0")
}

/// Feeds all of `input` split at the given points and returns (output, events).
pub fn run_split(config: &Config, input: &[u8], splits: &[usize]) -> (Vec<u8>, Log) {
    run_split_probing(config, input, splits, false)
}

/// [`run_split`], optionally calling `Session::has_event` before every `poll`.
pub fn run_split_probing(
    config: &Config,
    input: &[u8],
    splits: &[usize],
    probe: bool,
) -> (Vec<u8>, Log) {
    let mut h = Harness::new(config.clone());
    h.probe = probe;
    let mut last = 0;
    let mut points: Vec<usize> = splits.iter().map(|&p| p.min(input.len())).collect();
    points.sort_unstable();
    points.push(input.len());
    for p in points {
        if p > last {
            h.send(&input[last..p]);
            last = p;
        }
    }
    let mut log = h.log.clone();
    // Body chunking depends on the splits (and a doomed body may stop early):
    // compare whole delivered messages, not chunks. Violations depend on
    // timing by definition.
    log.events
        .retain(|e| e != "BODY" && !e.starts_with("VIOLATION"));
    log.body.clear();
    (h.out, log)
}
