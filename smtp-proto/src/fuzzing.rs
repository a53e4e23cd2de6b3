//! Entry points for fuzz targets (hidden; behind the `fuzzing` feature).
//!
//! Each function takes raw fuzzer bytes, derives the input, the read splits
//! and the application's decisions from them, and asserts the session's
//! invariants. The same functions run under `cargo test` on stored inputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::reply::Reply;
use crate::sasl::Mechanism;
use crate::server::{Decision, Event, PeerInfo, Session, TlsInfo};

/// Drives a whole session: the first bytes choose read sizes, decisions,
/// timeouts and TLS outcomes; the rest is the client's byte stream.
///
/// Invariants checked: no panic; replies are well-formed lines; pending
/// output stays bounded; a message is only ever completed by CRLF.CRLF (in
/// DATA) and with no bare line ending under the default policy.
pub fn server_session(data: &[u8]) {
    let (control, input) = data.split_at(data.len().min(16));
    let mut knobs = control.iter().copied().cycle();
    let mut next = move || knobs.next().unwrap_or(0);
    let mut config = Config::new("fuzz.example");
    config.limits.max_message_size = 1 << 16;
    config.limits.max_recipients = 5;
    config.extensions.starttls = true;
    config.auth.mechanisms = vec![Mechanism::Plain, Mechanism::Login];
    config.auth.allow_plaintext = next() & 1 == 1;
    config.lmtp = next() & 7 == 0;
    config.proxy_protocol = next() & 15 == 0;
    let max_out = config.limits.max_pending_output;
    let base = Instant::now();
    let mut now = base;
    let mut s = Session::new(Arc::new(config), PeerInfo::default(), now);
    let mut pos = 0;
    let mut body: Vec<u8> = Vec::new();
    let mut in_body = false;
    for _round in 0..100_000 {
        while let Some(ev) = s.poll_event() {
            let knob = next();
            match ev {
                Event::BodyStart { .. } => {
                    in_body = true;
                    body.clear();
                }
                Event::Body(chunk) => {
                    assert!(in_body, "body bytes outside a body");
                    body.extend_from_slice(chunk);
                }
                Event::MessageAborted(_) | Event::Reset => {
                    in_body = false;
                    body.clear();
                }
                Event::StartTls => {
                    let n = s.transmit().len();
                    s.transmitted(n);
                    if knob & 3 == 0 {
                        s.tls_failed();
                    } else {
                        let _ = s.tls_established(TlsInfo::default());
                    }
                }
                Event::MessageEnd {
                    ticket, recipients, ..
                } => {
                    for (i, &b) in body.iter().enumerate() {
                        if b == b'\n' {
                            assert!(i > 0 && body[i - 1] == b'\r', "bare LF delivered");
                        }
                    }
                    in_body = false;
                    let d = if knob & 1 == 0 {
                        Decision::Accept
                    } else {
                        Reply::TEMPORARY_FAILURE.into()
                    };
                    let n = if s.config().lmtp { recipients } else { 1 };
                    let _ = s.respond_each(ticket, vec![d; n]);
                }
                other => {
                    if let Some(t) = other.into_ticket() {
                        let d = match knob % 4 {
                            0 => Reply::NO_SUCH_USER.into(),
                            1 => Reply::TEMPORARY_FAILURE.into(),
                            _ => Decision::Accept,
                        };
                        if s.respond(t, d).is_err() {
                            panic!("the session refused its own ticket");
                        }
                    }
                }
            }
        }
        let out = s.transmit();
        assert!(out.len() <= max_out + 64 * 1024, "unbounded output");
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            assert!(line.len() >= 4 && line[..3].iter().all(u8::is_ascii_digit));
            assert_eq!(line.last(), Some(&b'\r'));
        }
        let knob = next();
        if knob & 7 != 0 {
            let n = s.transmit().len();
            s.transmitted(n);
        }
        if s.is_closed() {
            break;
        }
        if pos >= input.len() {
            if knob & 16 == 0 {
                now += Duration::from_secs(400);
                s.handle_timeout(now);
            } else {
                s.receive_eof();
            }
            continue;
        }
        let want = usize::from(knob % 64) + 1;
        let end = (pos + want).min(input.len());
        let took = s.receive(&input[pos..end], now);
        if took == 0 && !s.wants_write() && s.poll_event().is_none() && !s.is_waiting() {
            // Nothing can move: only a full buffer with nothing to emit.
            break;
        }
        pos += took;
        now += Duration::from_millis(u64::from(knob));
    }
}
