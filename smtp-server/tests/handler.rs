//! The async Handler layer driven by the Dispatcher, without any runtime.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_executor::block_on;
use smtp_proto::config::Config;
use smtp_proto::drive::Instruction;
use smtp_proto::reply::Reply;
use smtp_proto::sasl::Mechanism;
use smtp_proto::server::{AbortReason, Decision, PeerInfo, Session};
use smtp_server::dial::BoxFuture;
use smtp_server::handler::{
    Body, BodySink, Dispatcher, Envelope, Handler, Message, MessageDecision, Recipient, SessionInfo,
};

/// (sender, recipients, raw data, parsed subject, trace header)
type Delivery = (String, Vec<String>, Vec<u8>, Option<String>, Vec<u8>);

#[derive(Default)]
struct Recorder {
    delivered: Mutex<Vec<Delivery>>,
    no_trace: bool,
}

impl Handler for Recorder {
    fn wants_trace(&self) -> bool {
        !self.no_trace
    }

    async fn rcpt(&self, _s: &SessionInfo, _e: &Envelope, to: &Recipient) -> Decision {
        if to.address.starts_with("panic") {
            panic!("handler bug");
        }
        if to.address.starts_with("nobody") {
            return Reply::NO_SUCH_USER.into();
        }
        Decision::Accept
    }

    async fn message(
        &self,
        _s: &SessionInfo,
        env: &Envelope,
        msg: &Arc<Message>,
    ) -> MessageDecision {
        let subject = msg.parsed().and_then(|m| m.subject().map(str::to_owned));
        let rcpts: Vec<String> = env.recipient_addresses().map(str::to_owned).collect();
        let per: Vec<Decision> = rcpts
            .iter()
            .map(|r| {
                if r.starts_with("full") {
                    Reply::new(452, smtp_proto::reply::EnhancedCode::new(4, 2, 2), "Full").into()
                } else {
                    Decision::Accept
                }
            })
            .collect();
        self.delivered.lock().unwrap().push((
            env.from.clone(),
            rcpts,
            msg.data.clone(),
            subject,
            msg.trace.clone(),
        ));
        MessageDecision::PerRecipient(per)
    }
}

fn run<H: Handler>(config: Config, handler: Arc<H>, input: &[u8]) -> String {
    let mut s = Session::new(
        Arc::new(config),
        PeerInfo::new("192.0.2.9:2000".parse().unwrap()),
        Instant::now(),
    );
    let mut d = Dispatcher::new(handler, "s1");
    let mut out = Vec::new();
    let mut rest = input;
    loop {
        let r = block_on(d.drive(&mut s));
        out.extend_from_slice(s.transmit());
        let n = s.transmit().len();
        s.transmitted(n);
        match r {
            Instruction::Closed => break,
            Instruction::Throttle(until) => {
                s.handle_timeout(until);
                continue;
            }
            Instruction::Idle { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
        if rest.is_empty() {
            s.receive_eof(Instant::now());
            continue;
        }
        let n = s.receive(rest, Instant::now());
        rest = &rest[n..];
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn message_hook_gets_envelope_raw_and_parsed() {
    let h = Arc::new(Recorder::default());
    let out = run(
        Config::new("mx.example"),
        h.clone(),
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<nobody@y.example>\r\nDATA\r\n\
          Subject: Hello there\r\n\r\nbody\r\n.\r\nQUIT\r\n",
    );
    assert!(out.contains("550 5.1.1"));
    assert!(
        out.ends_with("250 2.0.0 Message accepted for delivery\r\n221 2.0.0 Bye\r\n"),
        "{out}"
    );
    let got = h.delivered.lock().unwrap();
    let (from, rcpts, data, subject, trace) = &got[0];
    assert_eq!(from, "a@b.example");
    assert_eq!(rcpts, &vec!["x@y.example".to_string()]);
    assert_eq!(data, b"Subject: Hello there\r\n\r\nbody\r\n");
    assert_eq!(subject.as_deref(), Some("Hello there"));
    let trace = String::from_utf8(trace.clone()).unwrap();
    assert!(trace.starts_with("Received: from c"), "{trace}");
    assert!(
        trace.contains("192.0.2.9") && trace.contains("for <x@y.example>"),
        "{trace}"
    );
}

#[test]
fn no_trace_when_the_handler_does_not_want_it() {
    let h = Arc::new(Recorder {
        no_trace: true,
        ..Recorder::default()
    });
    let out = run(
        Config::new("mx.example"),
        h.clone(),
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\nbody\r\n.\r\nQUIT\r\n",
    );
    assert!(out.contains("250 2.0.0 Message accepted"), "{out}");
    let got = h.delivered.lock().unwrap();
    let (_, _, data, _, trace) = &got[0];
    assert_eq!(data, b"body\r\n");
    assert!(trace.is_empty());
}

#[test]
fn panic_in_handler_ends_only_the_session_with_421() {
    let h = Arc::new(Recorder::default());
    let out = run(
        Config::new("mx.example"),
        h.clone(),
        b"EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<panic@y.example>\r\n",
    );
    assert!(
        out.ends_with("421 4.3.0 Internal error, closing connection\r\n"),
        "{out}"
    );
    assert!(h.delivered.lock().unwrap().is_empty());
}

#[test]
fn lmtp_per_recipient_decisions() {
    let mut c = Config::new("mx.example");
    c.lmtp = true;
    let h = Arc::new(Recorder::default());
    let out = run(
        c,
        h,
        b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@y.example>\r\nRCPT TO:<full@y.example>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert!(
        out.ends_with("250 2.0.0 Message accepted for delivery\r\n452 4.2.2 Full\r\n"),
        "{out}"
    );
}

#[test]
fn smtp_partial_refusal_refuses_the_message() {
    let h = Arc::new(Recorder::default());
    let out = run(
        Config::new("mx.example"),
        h,
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<a@y.example>\r\nRCPT TO:<full@y.example>\r\nDATA\r\nx\r\n.\r\n",
    );
    assert!(
        out.ends_with("354 End data with <CR><LF>.<CR><LF>\r\n452 4.2.2 Full\r\n"),
        "{out}"
    );
}

#[test]
fn auth_default_refuses() {
    struct Default;
    impl Handler for Default {}
    let mut c = Config::new("mx.example");
    c.auth.mechanisms = vec![Mechanism::Plain];
    c.auth.allow_plaintext = true;
    let mut s = Session::new(Arc::new(c), PeerInfo::default(), Instant::now());
    let mut d = Dispatcher::new(Arc::new(Default), "s2");
    s.receive(b"EHLO c\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\n", Instant::now());
    block_on(d.drive(&mut s));
    let out = String::from_utf8_lossy(s.transmit()).into_owned();
    assert!(
        out.ends_with("535 5.7.8 Authentication credentials invalid\r\n"),
        "{out}"
    );
}

/// What a handler saw of the session in each hook (issue 12, item 26).
#[derive(Default)]
struct Watcher {
    seen: Mutex<Vec<String>>,
    traces: Mutex<Vec<Vec<u8>>>,
}

impl Watcher {
    fn note(&self, hook: &str, s: &SessionInfo) {
        self.seen.lock().unwrap().push(format!(
            "{hook} helo={} tls={} auth={}",
            s.helo.as_deref().unwrap_or("-"),
            s.tls,
            s.authenticated.as_deref().unwrap_or("-")
        ));
    }
}

impl Handler for Watcher {
    async fn verify(&self, s: &SessionInfo, _arg: &str, _expand: bool) -> Decision {
        self.note("verify", s);
        Decision::Accept
    }

    async fn auth(&self, s: &SessionInfo, _c: &smtp_proto::sasl::Credentials) -> Decision {
        self.note("auth", s);
        Decision::Accept
    }

    async fn message(
        &self,
        s: &SessionInfo,
        _env: &Envelope,
        msg: &Arc<Message>,
    ) -> MessageDecision {
        self.note("message", s);
        self.traces.lock().unwrap().push(msg.trace.clone());
        Decision::Accept.into()
    }

    fn disconnect(&self, s: &SessionInfo, _reason: smtp_proto::server::CloseReason) {
        self.note("disconnect", s);
    }
}

fn drive_all(config: Config, handler: Arc<Watcher>, input: &[u8]) -> String {
    let mut s = Session::new(
        Arc::new(config),
        PeerInfo::new("192.0.2.9:2000".parse().unwrap()),
        Instant::now(),
    );
    let mut d = Dispatcher::new(handler, "s1");
    s.receive(input, Instant::now());
    let mut out = Vec::new();
    loop {
        let r = block_on(d.drive(&mut s));
        out.extend_from_slice(s.transmit());
        let n = s.transmit().len();
        s.transmitted(n);
        match r {
            Instruction::Closed => break,
            _ => s.receive_eof(Instant::now()),
        }
    }
    String::from_utf8(out).unwrap()
}

#[test]
fn every_hook_sees_the_current_session() {
    let mut c = Config::new("mx.example");
    c.auth.mechanisms = vec![Mechanism::Plain];
    c.auth.allow_plaintext = true;
    let h = Arc::new(Watcher::default());
    let out = drive_all(
        c,
        h.clone(),
        b"EHLO first\r\nVRFY bob\r\nEHLO second\r\nAUTH PLAIN AGJvYgBzZWNyZXQ=\r\nVRFY bob\r\nQUIT\r\n",
    );
    assert!(out.ends_with("221 2.0.0 Bye\r\n"), "{out}");
    assert_eq!(
        *h.seen.lock().unwrap(),
        vec![
            "verify helo=first tls=false auth=-",
            "auth helo=second tls=false auth=-",
            "verify helo=second tls=false auth=bob",
            "disconnect helo=second tls=false auth=bob",
        ]
    );
}

/// The `id` of a Received header.
fn trace_id(trace: &[u8]) -> String {
    let t = String::from_utf8_lossy(trace);
    let at = t.find(" id ").expect("an id") + 4;
    t[at..]
        .split(|c: char| c.is_whitespace() || c == ';')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn received_id_is_per_message() {
    let h = Arc::new(Watcher::default());
    let msg = "MAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\nhi\r\n.\r\n";
    let input = format!("EHLO c\r\n{msg}{msg}{msg}QUIT\r\n");
    let out = drive_all(Config::new("mx.example"), h.clone(), input.as_bytes());
    assert!(out.ends_with("221 2.0.0 Bye\r\n"), "{out}");
    let ids: Vec<String> = h
        .traces
        .lock()
        .unwrap()
        .iter()
        .map(|t| trace_id(t))
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.iter().all(|id| id.starts_with("s1")), "{ids:?}");
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
}

// ----- streamed bodies (issue 14): Handler::body and BodySink -----

/// What the sinks saw.
#[derive(Default)]
struct Log {
    chunks: Vec<u8>,
    trace_at_start: Vec<u8>,
    finished: usize,
    aborted: Vec<AbortReason>,
    message_hook: usize,
}

struct Streamer {
    log: Arc<Mutex<Log>>,
    /// Refuse any chunk that contains this.
    refuse: Option<&'static [u8]>,
}

struct Sink {
    log: Arc<Mutex<Log>>,
    refuse: Option<&'static [u8]>,
}

impl BodySink for Sink {
    fn write<'a>(&'a mut self, chunk: &'a [u8]) -> BoxFuture<'a, Result<(), Reply>> {
        Box::pin(async move {
            if self
                .refuse
                .is_some_and(|bad| chunk.windows(bad.len()).any(|w| w == bad))
            {
                return Err(Reply::new(
                    554,
                    smtp_proto::reply::EnhancedCode::new(5, 6, 0),
                    "Content refused",
                ));
            }
            self.log.lock().unwrap().chunks.extend_from_slice(chunk);
            Ok(())
        })
    }

    fn finish(self: Box<Self>, message: Arc<Message>) -> BoxFuture<'static, MessageDecision> {
        Box::pin(async move {
            assert!(message.data.is_empty(), "the body went to the sink");
            self.log.lock().unwrap().finished += 1;
            MessageDecision::All(Decision::Accept)
        })
    }

    fn abort(self: Box<Self>, reason: AbortReason) {
        self.log.lock().unwrap().aborted.push(reason);
    }
}

impl Handler for Streamer {
    async fn body(&self, _: &SessionInfo, _: &Envelope, message: &Message) -> Body {
        self.log.lock().unwrap().trace_at_start = message.trace.clone();
        Body::Stream(Box::new(Sink {
            log: self.log.clone(),
            refuse: self.refuse,
        }))
    }

    async fn message(&self, _: &SessionInfo, _: &Envelope, _: &Arc<Message>) -> MessageDecision {
        self.log.lock().unwrap().message_hook += 1;
        MessageDecision::All(Decision::Accept)
    }
}

fn streamer(refuse: Option<&'static [u8]>) -> (Arc<Streamer>, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let h = Arc::new(Streamer {
        log: log.clone(),
        refuse,
    });
    (h, log)
}

const HEAD: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n";

#[test]
fn chunks_reach_the_sink_and_the_sink_decides() {
    let (h, log) = streamer(None);
    let body: Vec<u8> = (0..2000)
        .flat_map(|i| format!("line {i} of a long message\r\n").into_bytes())
        .collect();
    let mut input = HEAD.to_vec();
    input.extend_from_slice(&body);
    input.extend_from_slice(b"..dot\r\n.\r\nQUIT\r\n");
    let out = run(Config::new("mx.test"), h, &input);
    assert!(out.contains("250 2.0.0"), "{out}");
    let log = log.lock().unwrap();
    let mut expected = body.clone();
    expected.extend_from_slice(b".dot\r\n");
    assert_eq!(log.chunks, expected, "every byte, unstuffed, in order");
    assert!(log.trace_at_start.starts_with(b"Received: "));
    assert_eq!((log.finished, log.message_hook), (1, 0));
    assert!(log.aborted.is_empty());
}

#[test]
fn a_refused_chunk_refuses_the_message_and_aborts_the_sink() {
    let (h, log) = streamer(Some(b"VIRUS"));
    let mut input = HEAD.to_vec();
    input.extend_from_slice(b"ok\r\nVIRUS here\r\nmore\r\n.\r\nQUIT\r\n");
    let out = run(Config::new("mx.test"), h, &input);
    assert!(out.contains("554 5.6.0 Content refused"), "{out}");
    let log = log.lock().unwrap();
    assert_eq!(log.finished, 0);
    assert_eq!(log.aborted, [AbortReason::Refused]);
}

#[test]
fn a_body_cut_off_aborts_the_sink() {
    // Too big for the size limit.
    let (h, log) = streamer(None);
    let mut config = Config::new("mx.test");
    config.limits.max_message_size = 100;
    let mut input = HEAD.to_vec();
    input.extend_from_slice(&[b'x'; 300]);
    input.extend_from_slice(b"\r\n.\r\nQUIT\r\n");
    let out = run(config, h, &input);
    assert!(out.contains("552 5.3.4"), "{out}");
    assert_eq!(log.lock().unwrap().aborted, [AbortReason::TooBig]);
    assert_eq!(log.lock().unwrap().finished, 0);
    // The connection ends before the final dot.
    let (h, log) = streamer(None);
    let mut input = HEAD.to_vec();
    input.extend_from_slice(b"half a message\r\n");
    run(Config::new("mx.test"), h, &input);
    assert_eq!(log.lock().unwrap().aborted, [AbortReason::Disconnected]);
    assert_eq!(log.lock().unwrap().finished, 0);
}

/// Records the message its `message` hook gets; with `discard`, takes
/// bodies as the sink store does; with `cap`, buffers up to it.
#[derive(Default)]
struct Kept {
    discard: bool,
    cap: Option<usize>,
    seen: Mutex<Option<(Vec<u8>, String)>>,
}

impl Handler for Kept {
    async fn body(&self, s: &SessionInfo, e: &Envelope, m: &Message) -> Body {
        match (self.discard, self.cap) {
            (true, _) => smtp_server::store::SinkHandler.body(s, e, m).await,
            (false, Some(cap)) => Body::BufferUpTo(cap),
            (false, None) => Body::Buffer,
        }
    }

    async fn message(&self, _: &SessionInfo, _: &Envelope, m: &Arc<Message>) -> MessageDecision {
        *self.seen.lock().unwrap() = Some((m.data.clone(), m.id.clone()));
        MessageDecision::All(Decision::Accept)
    }
}

#[test]
fn the_whole_message_form_stays_the_default() {
    let h = Arc::new(Kept::default());
    let mut input = HEAD.to_vec();
    input.extend_from_slice(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let out = run(Config::new("mx.test"), h.clone(), &input);
    assert!(out.contains("250 2.0.0"), "{out}");
    let (data, _) = h.seen.lock().unwrap().clone().unwrap();
    assert_eq!(data, b"Subject: hi\r\n\r\nbody\r\n");
}

#[test]
fn the_sink_store_keeps_no_body() {
    let h = Arc::new(Kept {
        discard: true,
        ..Kept::default()
    });
    let mut input = HEAD.to_vec();
    for _ in 0..2000 {
        input.extend_from_slice(&[b'y'; 98]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let out = run(Config::new("mx.test"), h.clone(), &input);
    assert!(out.contains("250 2.0.0"), "{out}");
    let (data, id) = h.seen.lock().unwrap().clone().unwrap();
    assert!(data.is_empty(), "no byte of the body kept");
    assert_eq!(id, "s1-1");
}

#[test]
fn the_whole_message_form_buffers_up_to_its_cap() {
    let h = Arc::new(Kept {
        cap: Some(64),
        ..Kept::default()
    });
    let mut input = HEAD.to_vec();
    input.extend_from_slice(b"Subject: big\r\n\r\n");
    for _ in 0..3 {
        input.extend_from_slice(&[b'z'; 30]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b".\r\n");
    input.extend_from_slice(&HEAD[HEAD.iter().position(|&b| b == b'M').unwrap()..]);
    input.extend_from_slice(b"Subject: small\r\n\r\nok\r\n.\r\nQUIT\r\n");
    let out = run(Config::new("mx.test"), h.clone(), &input);
    let finals: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("552 ") || l.starts_with("250 2.0.0"))
        .collect();
    assert!(finals[0].starts_with("552 5.3.4"), "{out}");
    assert!(finals[1].starts_with("250 2.0.0"), "{out}");
    let (data, _) = h.seen.lock().unwrap().clone().unwrap();
    assert_eq!(
        data, b"Subject: small\r\n\r\nok\r\n",
        "only the small one reached the hook"
    );
}
