//! Property tests: our client against our server, wired together in memory
//! with arbitrary splits in both directions; and faults injected into one
//! server reply.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use proptest::prelude::*;
use smtp_proto::client::{
    Client, ClientAuth, ClientConfig, ClientError, ClientEvent, Envelope, TlsPolicy,
};
use smtp_proto::command::ForwardPath;
use smtp_proto::config::{Config, ContentPolicy};
use smtp_proto::drive::{Instruction, Output};
use smtp_proto::reply::{Reply, parse_reply};
use smtp_proto::sasl::Mechanism;
use smtp_proto::server::{Decision, Event, PeerInfo, Session, TlsInfo};

/// One message to send.
#[derive(Debug, Clone)]
struct Message {
    from: Option<String>,
    to: Vec<String>,
    body: Vec<u8>,
}

/// How the two sides are set up.
#[derive(Debug, Clone)]
struct Setup {
    pipelining: bool,
    chunking: bool,
    lmtp: bool,
    auth: bool,
    /// STARTTLS offered and required (the handshake is simulated).
    tls: bool,
    /// Bodies are CRLF-only without NUL and the server keeps its strict
    /// defaults; otherwise the server accepts bare CR/LF, NUL and long lines.
    strict: bool,
    chunk_size: usize,
    max_pending_output: usize,
}

/// A fault in one server reply.
#[derive(Debug, Clone)]
enum Fault {
    /// The code is replaced (every line).
    Code(u16),
    /// The reply is cut after this many bytes, then the connection closes.
    Truncate(usize),
    /// The reply is replaced by this line.
    Garbage(Vec<u8>),
}

/// What happened.
#[derive(Debug, Default)]
struct Outcome {
    /// The client's events, briefly.
    events: Vec<String>,
    errors: Vec<ClientError>,
    /// Bodies the server delivered, with the recipient local parts.
    delivered: Vec<(Vec<String>, Vec<u8>)>,
    /// The codes of the replies the server sent.
    codes: Vec<u16>,
    /// Per message (by send order): which recipients the client was told
    /// were accepted with the message.
    accepted: Vec<Vec<usize>>,
    /// Messages the client started.
    started: usize,
    client_closed: bool,
}

fn server_config(s: &Setup) -> Config {
    let mut c = Config::new("mx.example");
    c.lmtp = s.lmtp;
    c.extensions.pipelining = s.pipelining;
    c.extensions.chunking = s.chunking;
    c.extensions.binarymime = s.chunking;
    if !s.strict {
        c.limits.bare_line_endings = ContentPolicy::Accept;
        c.limits.nul_bytes = ContentPolicy::Accept;
        c.limits.long_lines = ContentPolicy::Accept;
    }
    if s.auth {
        c.auth.mechanisms = vec![Mechanism::Plain, Mechanism::Login];
        c.auth.allow_plaintext = true;
    }
    c.extensions.starttls = s.tls;
    c
}

fn client_config(s: &Setup) -> ClientConfig {
    let mut c = ClientConfig::new("client.example");
    c.tls = if s.tls {
        TlsPolicy::Required
    } else {
        TlsPolicy::None
    };
    c.lmtp = s.lmtp;
    c.chunk_size = s.chunk_size;
    // A narrow pipelining window half of the time.
    c.max_pipelined = if s.chunk_size % 2 == 0 { 2 } else { 100 };
    c.max_pending_output = s.max_pending_output;
    if s.auth {
        c.auth = Some(ClientAuth::new("bob", "secret"));
        c.allow_plaintext_auth = true;
    }
    c
}

/// The server's scripted answers: recipients whose local part starts with
/// `nobody` are refused, credentials are bob/secret, everything else is
/// accepted.
fn decide(ev: &Event<'_>) -> Decision {
    match ev {
        Event::Rcpt {
            to: ForwardPath::Mailbox(m),
            ..
        } if m.local_part.starts_with("nobody") => Reply::NO_SUCH_USER.into(),
        Event::Auth { credentials, .. }
            if credentials.username != "bob" || credentials.password.expose() != "secret" =>
        {
            Reply::AUTH_FAILED.into()
        }
        _ => Decision::Accept,
    }
}

/// Splits server output into replies and applies the fault to one.
struct Proxy {
    raw: Vec<u8>,
    to_client: Vec<u8>,
    count: usize,
    /// The code of every reply, as the server sent it.
    codes: Vec<u16>,
    fault: Option<(usize, Fault)>,
    /// The connection is to be closed once `to_client` is delivered.
    eof: bool,
}

impl Proxy {
    fn push(&mut self, bytes: &[u8]) {
        if self.eof {
            return;
        }
        self.raw.extend_from_slice(bytes);
        while let Ok(Some((reply, n))) = parse_reply(&self.raw, 1 << 20) {
            let bytes: Vec<u8> = self.raw.drain(..n).collect();
            let index = self.count;
            self.count += 1;
            self.codes.push(reply.code());
            match &self.fault {
                Some((k, fault)) if *k == index => match fault {
                    Fault::Code(code) => {
                        let mut r = bytes.clone();
                        let digits = code.to_string();
                        let mut line_start = true;
                        for i in 0..r.len() {
                            if line_start && i + 3 <= r.len() {
                                r[i..i + 3].copy_from_slice(digits.as_bytes());
                            }
                            line_start = r[i] == b'\n';
                        }
                        self.to_client.extend_from_slice(&r);
                    }
                    Fault::Truncate(cut) => {
                        let cut = cut % bytes.len().max(1);
                        self.to_client.extend_from_slice(&bytes[..cut]);
                        self.eof = true;
                        return;
                    }
                    Fault::Garbage(g) => {
                        self.to_client.extend_from_slice(g);
                        self.to_client.extend_from_slice(b"\r\n");
                    }
                },
                _ => self.to_client.extend_from_slice(&bytes),
            }
        }
    }
}

fn describe(e: &ClientEvent) -> String {
    match e {
        ClientEvent::Ready { extensions } => format!("Ready esmtp={}", extensions.esmtp),
        ClientEvent::Recipient { index, reply } => format!("Recipient {index} {}", reply.code()),
        ClientEvent::MessageAccepted { recipient, reply } => {
            format!("Accepted {recipient:?} {}", reply.code())
        }
        ClientEvent::MessageRejected { recipient, reply } => {
            format!("Rejected {recipient:?} {}", reply.code())
        }
        ClientEvent::Error(e) => format!("Error {e:?}"),
        e => format!("{e:?}"),
    }
}

/// Runs a whole session: Ready, each message in turn, QUIT.
fn run(
    setup: &Setup,
    messages: &[Message],
    splits: &[usize],
    pieces: &[usize],
    fault: Option<(usize, Fault)>,
) -> Outcome {
    let now = Instant::now();
    let mut server = Session::new(Arc::new(server_config(setup)), PeerInfo::default(), now);
    let mut client = Client::new(client_config(setup), now);
    let mut proxy = Proxy {
        raw: Vec::new(),
        to_client: Vec::new(),
        count: 0,
        codes: Vec::new(),
        fault,
        eof: false,
    };
    let mut out = Outcome::default();
    let mut body = Vec::new();
    let mut rcpts: Vec<String> = Vec::new();
    let mut next = 0usize; // next message to start
    let mut current: Option<(usize, usize)> = None; // (message, bytes pushed)
    let mut ended = false;
    let mut quitting = false;
    let mut eof_sent = false;
    let mut split = splits.iter().cycle();
    let mut piece = pieces.iter().cycle();
    let mut idle_rounds = 0;
    let mut clock = now;
    for _round in 0..100_000 {
        let mut progress = false;
        // The server.
        loop {
            let ev = match server.poll() {
                Output::Event(ev) => ev,
                Output::Instruction(Instruction::StartTls) => {
                    progress = true;
                    // The 220 goes out in clear text, then the handshake.
                    let bytes = server.transmit().to_vec();
                    server.transmitted(bytes.len());
                    proxy.push(&bytes);
                    server.tls_established(TlsInfo::default(), now).unwrap();
                    continue;
                }
                Output::Instruction(Instruction::Throttle(until)) => {
                    // Past the soft error limit: wait out the delay.
                    server.handle_timeout(until);
                    continue;
                }
                Output::Instruction(_) => break,
            };
            progress = true;
            let d = decide(&ev);
            match ev {
                Event::Body(chunk) => body.extend_from_slice(chunk),
                Event::BodyStart { .. } | Event::MessageAborted(_) | Event::Reset => body.clear(),
                Event::Mail { ticket, .. } => {
                    rcpts.clear();
                    server.respond(ticket, d, now).unwrap();
                }
                Event::Rcpt { ticket, to, .. } => {
                    if matches!(d, Decision::Accept) {
                        rcpts.push(match to {
                            ForwardPath::Mailbox(m) => m.local_part.to_owned(),
                            ForwardPath::Postmaster => "Postmaster".into(),
                        });
                    }
                    server.respond(ticket, d, now).unwrap();
                }
                Event::MessageEnd {
                    ticket, recipients, ..
                } => {
                    out.delivered
                        .push((std::mem::take(&mut rcpts), std::mem::take(&mut body)));
                    if setup.lmtp {
                        server
                            .respond_each(ticket, vec![Decision::Accept; recipients], now)
                            .unwrap();
                    } else {
                        server.respond(ticket, Decision::Accept, now).unwrap();
                    }
                }
                ev => {
                    if let Some(t) = ev.into_ticket() {
                        server.respond(t, d, now).unwrap();
                    }
                }
            }
        }
        let n = server.transmit().len();
        if n > 0 {
            progress = true;
            let bytes = server.transmit().to_vec();
            server.transmitted(n);
            proxy.push(&bytes);
        }
        // Server to client, in arbitrary pieces.
        if !proxy.to_client.is_empty() && !client.is_closed() {
            let k = (*split.next().unwrap()).clamp(1, proxy.to_client.len());
            let taken = client.receive(&proxy.to_client[..k], clock);
            proxy
                .to_client
                .drain(..taken.max(if client.is_closed() { k } else { 0 }));
            progress = true;
        }
        if proxy.eof && proxy.to_client.is_empty() && !eof_sent {
            eof_sent = true;
            client.receive_eof(clock);
            progress = true;
        }
        // The client.
        loop {
            let ev = match client.poll() {
                Output::Event(ev) => ev,
                Output::Instruction(Instruction::StartTls) => {
                    progress = true;
                    out.events.push("StartTls".into());
                    client.tls_established(TlsInfo::default(), clock).unwrap();
                    continue;
                }
                Output::Instruction(Instruction::Closed) => {
                    // Recorded once, when the client first says it.
                    if !out.client_closed {
                        progress = true;
                        out.events.push("Closed".into());
                        out.client_closed = true;
                    }
                    break;
                }
                Output::Instruction(_) => break,
            };
            progress = true;
            out.events.push(describe(&ev));
            match ev {
                ClientEvent::Error(e) => out.errors.push(e),
                ClientEvent::MessageAccepted { recipient, .. } => {
                    let m = out.started - 1;
                    let all: Vec<usize> = (0..messages[m].to.len())
                        .filter(|i| !messages[m].to[*i].starts_with("nobody"))
                        .collect();
                    match recipient {
                        Some(i) => out.accepted[m].push(i),
                        None => out.accepted[m].extend(all),
                    }
                }
                _ => {}
            }
        }
        if client.is_closed() {
            if client.transmit().is_empty() {
                break;
            }
        } else if client.is_ready() {
            current = None;
            if next < messages.len() {
                let m = &messages[next];
                let env = Envelope::new(m.from.as_deref(), m.to.iter().map(String::as_str));
                out.started += 1;
                out.accepted.push(Vec::new());
                match client.send_mail(&env, clock) {
                    Ok(()) => current = Some((next, 0)),
                    // After a HELO fallback, e.g. SMTPUTF8 is not offered.
                    Err(e) => out.events.push(format!("SendError {e:?}")),
                }
                ended = false;
                next += 1;
                progress = true;
            } else if !quitting {
                quitting = true;
                client.quit(clock).unwrap();
                progress = true;
            }
        }
        // Body pieces, as the client takes them.
        if let Some((m, pushed)) = current.as_mut() {
            let b = &messages[*m].body;
            if *pushed < b.len() && client.wants_body() {
                let k = (*piece.next().unwrap()).clamp(1, b.len() - *pushed);
                if let Ok(n) = client.push_body(&b[*pushed..*pushed + k], clock) {
                    *pushed += n;
                    progress |= n > 0;
                }
            }
            if *pushed == b.len() && !ended {
                ended = true;
                // Err once the message was refused: fine.
                let _ = client.end_body(clock);
                progress = true;
            }
        }
        // Client to server, in arbitrary pieces.
        let t = client.transmit();
        if !t.is_empty() {
            let k = (*split.next().unwrap()).clamp(1, t.len());
            let taken = server.receive(&t[..k], now);
            client.transmitted(taken);
            progress |= taken > 0;
        }
        if progress {
            idle_rounds = 0;
        } else {
            idle_rounds += 1;
            if idle_rounds > 3 {
                // Stuck: a reply that never comes is a timeout in real life.
                match client.poll_timeout() {
                    Some(deadline) if !client.is_closed() => {
                        clock = clock.max(deadline);
                        client.handle_timeout(clock);
                        idle_rounds = 0;
                    }
                    _ => break,
                }
            }
        }
    }
    out.codes = proxy.codes;
    out
}

/// What the server must deliver of a pushed body.
fn expected_body(body: &[u8], bdat: bool) -> Vec<u8> {
    let mut b = body.to_vec();
    if !bdat && !b.is_empty() && !b.ends_with(b"\r\n") {
        b.extend_from_slice(b"\r\n");
    }
    b
}

/// Bodies with every hazard: dots at line starts, bare CR and LF, CRLF.CRLF.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\r\n".to_vec()),
        Just(b".".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b"\r\n..".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n.\n".to_vec()),
        Just(b"Subject: x".to_vec()),
        Just(vec![b'x'; 120]),
        prop::collection::vec(any::<u8>(), 0..8),
    ];
    prop::collection::vec(piece, 0..25).prop_map(|v| v.concat())
}

/// Only CRLF line endings, and no NUL (the strict server refuses both).
fn normalise(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    for &b in body {
        match b {
            b'\r' | 0 => {}
            b'\n' => out.extend_from_slice(b"\r\n"),
            b => out.push(b),
        }
    }
    out
}

fn message() -> impl Strategy<Value = Message> {
    let addr = prop::sample::select(vec![
        "a@example.net",
        "b.c@example.org",
        "nobody@example.net",
        "nobody2@example.com",
        "\"quoted name\"@example.net",
        "x@[192.0.2.1]",
        "jörg@bücher.example",
        "Postmaster",
    ]);
    let from = prop::option::of(prop::sample::select(vec![
        "alice@example.org",
        "jörg@bücher.example",
    ]));
    (from, prop::collection::vec(addr, 1..5), body()).prop_map(|(from, to, body)| Message {
        from: from.map(str::to_owned),
        to: to.into_iter().map(str::to_owned).collect(),
        body,
    })
}

fn setup() -> impl Strategy<Value = Setup> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        1usize..200,
        prop_oneof![Just(64usize), Just(1000), Just(256 * 1024)],
    )
        .prop_map(
            |(pipelining, chunking, lmtp, auth, tls, strict, chunk_size, max_pending_output)| {
                Setup {
                    pipelining,
                    chunking,
                    lmtp,
                    auth,
                    tls,
                    strict,
                    chunk_size,
                    max_pending_output,
                }
            },
        )
}

fn splits() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![1usize..4, 1usize..64, Just(usize::MAX)], 1..8)
}

/// Checks a clean run: every message reached the server intact, and the
/// client reported exactly the server's decisions.
fn check_clean(setup: &Setup, messages: &[Message], out: &Outcome) -> Result<(), TestCaseError> {
    prop_assert!(out.errors.is_empty(), "{:?}", out.events);
    prop_assert!(out.client_closed, "{:?}", out.events);
    prop_assert_eq!(out.started, messages.len());
    prop_assert_eq!(out.events.iter().any(|e| e == "StartTls"), setup.tls);
    prop_assert_eq!(out.events.iter().any(|e| e == "Authenticated"), setup.auth);
    let bdat = setup.chunking;
    let mut delivered = out.delivered.iter();
    for (m, msg) in messages.iter().enumerate() {
        let accepted: Vec<usize> = (0..msg.to.len())
            .filter(|i| !msg.to[*i].starts_with("nobody"))
            .collect();
        prop_assert_eq!(&out.accepted[m], &accepted, "{:?}", out.events);
        if accepted.is_empty() {
            continue;
        }
        let (rcpts, body) = delivered.next().unwrap();
        prop_assert_eq!(rcpts.len(), accepted.len());
        prop_assert_eq!(body, &expected_body(&msg.body, bdat));
    }
    prop_assert!(delivered.next().is_none());
    // Per-recipient results, in order, for every message.
    let recipients: Vec<&String> = out
        .events
        .iter()
        .filter(|e| e.starts_with("Recipient"))
        .collect();
    let expected: usize = messages.iter().map(|m| m.to.len()).sum();
    prop_assert_eq!(recipients.len(), expected);
    Ok(())
}

fn prepare(setup: &Setup, mut messages: Vec<Message>) -> Vec<Message> {
    if setup.strict {
        for m in &mut messages {
            m.body = normalise(&m.body);
        }
    }
    messages
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// The body the server delivers is byte-identical to what was pushed,
    /// whatever the extensions, splits and push sizes.
    #[test]
    fn client_against_server(
        setup in setup(),
        messages in prop::collection::vec(message(), 1..4),
        splits in splits(),
        pieces in splits(),
    ) {
        let messages = prepare(&setup, messages);
        let out = run(&setup, &messages, &splits, &pieces, None);
        check_clean(&setup, &messages, &out)?;
    }

    /// A fault in any one server reply (but the last, QUIT's) is reported
    /// as an error or a refusal, never taken for a success: every message
    /// the client calls accepted was delivered intact.
    #[test]
    fn faults_are_never_success(
        setup in setup(),
        messages in prop::collection::vec(message(), 1..3),
        splits in splits(),
        which in any::<prop::sample::Index>(),
        fault in prop_oneof![
            prop::sample::select(vec![220u16, 221, 235, 250, 334, 354, 421, 450, 451, 500, 502, 503, 550, 554]).prop_map(Fault::Code),
            any::<usize>().prop_map(Fault::Truncate),
            prop_oneof![
                Just(b"garbage".to_vec()),
                Just(b"25".to_vec()),
                Just(b"250-continued but never ended".to_vec()),
                Just(b"2500 no space".to_vec()),
                Just(b"199 too low".to_vec()),
            ].prop_map(Fault::Garbage),
        ],
    ) {
        let messages = prepare(&setup, messages);
        let clean = run(&setup, &messages, &splits, &[7], None);
        check_clean(&setup, &messages, &clean)?;
        // Not QUIT's reply: after QUIT nothing can go wrong.
        let k = which.index(clean.codes.len() - 1);
        let out = run(&setup, &messages, &splits, &[7], Some((k, fault.clone())));
        // Never a false success: every message the client calls accepted
        // was delivered intact.
        let helo = out.events.iter().any(|e| e == "Ready esmtp=false");
        let bdat = setup.chunking && !helo;
        for (m, accepted) in out.accepted.iter().enumerate() {
            if accepted.is_empty() {
                continue;
            }
            let body = expected_body(&messages[m].body, bdat);
            prop_assert!(
                out.delivered.iter().any(|(_, b)| *b == body),
                "message {} reported accepted but not delivered: {:?}", m, out.events
            );
        }
        // And the fault shows.
        match &fault {
            Fault::Code(code) => {
                let original = clean.codes[k];
                // A refusal turned into an acceptance cannot be told from a
                // real one, and one turned into another refusal is still a
                // refusal (the client may have absorbed it, e.g. the DATA
                // refusal after every RCPT failed); a 354 for that DATA
                // refusal only makes the client end the empty body RFC 2920
                // asks for, and the message stays refused. Every other
                // change must show in the events.
                let undetectable = *code == original
                    || original >= 400 && (*code == 250 || *code == 354 || *code >= 400);
                prop_assert!(undetectable || out.events != clean.events,
                    "code {} for {} at reply {} unnoticed: {:?}", code, original, k, out.events);
            }
            Fault::Truncate(_) | Fault::Garbage(_) => {
                prop_assert!(!out.errors.is_empty(),
                    "fault {:?} at reply {} unnoticed: {:?}", fault, k, out.events);
            }
        }
    }
}

proptest! {
    /// The streaming dot-stuffer gives what `dot_stuff` gives for the whole
    /// body, however it is split.
    #[test]
    fn dot_stuffer_is_split_invariant(body in body(), cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8)) {
        use smtp_proto::data::{DotStuffer, dot_stuff};
        let mut whole = Vec::new();
        dot_stuff(&body, &mut whole);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
        cuts.sort_unstable();
        let mut st = DotStuffer::new();
        let mut out = Vec::new();
        let mut last = 0;
        for c in cuts.into_iter().chain([body.len()]) {
            st.feed(&body[last..c], &mut out);
            last = c;
        }
        st.finish(&mut out);
        prop_assert_eq!(out, whole);
    }
}
