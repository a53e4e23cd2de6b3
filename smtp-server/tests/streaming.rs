//! Streamed bodies (issue 14): the handler asks for a sink at the body's
//! start, the dispatcher writes each chunk into it, and the sink decides at
//! the end; a cut-off body aborts it. Driven by the dispatcher, no runtime.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures_executor::block_on;
use smtp_proto::config::Config;
use smtp_proto::drive::Instruction;
use smtp_proto::reply::Reply;
use smtp_proto::server::{AbortReason, Decision, PeerInfo, Session};
use smtp_server::dial::BoxFuture;
use smtp_server::handler::{
    Body, BodySink, Dispatcher, Envelope, Handler, Message, MessageDecision, SessionInfo,
};

/// What the sinks saw.
#[derive(Default)]
struct Log {
    chunks: Vec<u8>,
    trace_at_start: Vec<u8>,
    finished: usize,
    aborted: Vec<AbortReason>,
    message_hook: usize,
}

struct Recorder {
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

impl Handler for Recorder {
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

/// Feeds `input` through a dispatcher for `handler`; the replies.
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

fn recorder(refuse: Option<&'static [u8]>) -> (Arc<Recorder>, Arc<Mutex<Log>>) {
    let log = Arc::new(Mutex::new(Log::default()));
    let h = Arc::new(Recorder {
        log: log.clone(),
        refuse,
    });
    (h, log)
}

const HEAD: &[u8] = b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<d@e.f>\r\nDATA\r\n";

#[test]
fn chunks_reach_the_sink_and_the_sink_decides() {
    let (h, log) = recorder(None);
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
    let (h, log) = recorder(Some(b"VIRUS"));
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
    let (h, log) = recorder(None);
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
    let (h, log) = recorder(None);
    let mut input = HEAD.to_vec();
    input.extend_from_slice(b"half a message\r\n");
    run(Config::new("mx.test"), h, &input);
    assert_eq!(log.lock().unwrap().aborted, [AbortReason::Disconnected]);
    assert_eq!(log.lock().unwrap().finished, 0);
}

#[test]
fn the_whole_message_form_stays_the_default() {
    #[derive(Default)]
    struct Whole(Mutex<Vec<u8>>);
    impl Handler for Whole {
        async fn message(
            &self,
            _: &SessionInfo,
            _: &Envelope,
            m: &Arc<Message>,
        ) -> MessageDecision {
            *self.0.lock().unwrap() = m.data.clone();
            MessageDecision::All(Decision::Accept)
        }
    }
    let h = Arc::new(Whole::default());
    let mut input = HEAD.to_vec();
    input.extend_from_slice(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    let out = run(Config::new("mx.test"), h.clone(), &input);
    assert!(out.contains("250 2.0.0"), "{out}");
    assert_eq!(*h.0.lock().unwrap(), b"Subject: hi\r\n\r\nbody\r\n");
}

#[test]
fn the_sink_store_keeps_no_body() {
    #[derive(Default)]
    struct Seen(Mutex<Option<(usize, String)>>);
    struct Counting(Arc<Seen>);
    impl Handler for Counting {
        async fn body(&self, s: &SessionInfo, e: &Envelope, m: &Message) -> Body {
            smtp_server::store::SinkHandler.body(s, e, m).await
        }
        async fn message(
            &self,
            _: &SessionInfo,
            _: &Envelope,
            m: &Arc<Message>,
        ) -> MessageDecision {
            *self.0.0.lock().unwrap() = Some((m.data.len(), m.id.clone()));
            MessageDecision::All(Decision::Accept)
        }
    }
    let seen = Arc::new(Seen::default());
    let mut input = HEAD.to_vec();
    for _ in 0..2000 {
        input.extend_from_slice(&[b'y'; 98]);
        input.extend_from_slice(b"\r\n");
    }
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let out = run(
        Config::new("mx.test"),
        Arc::new(Counting(seen.clone())),
        &input,
    );
    assert!(out.contains("250 2.0.0"), "{out}");
    let (len, id) = seen.0.lock().unwrap().clone().unwrap();
    assert_eq!(len, 0, "no byte of the body kept");
    assert_eq!(id, "s1-1");
}
