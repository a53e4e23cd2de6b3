//! Allocation counts in steady state: after a session is warmed up, the
//! core allocates nothing per command (issue 7's "no allocation per
//! command"). Counted with `stats_alloc`'s instrumented global allocator.
//! The whole file is one test so no other test allocates concurrently.
#![allow(clippy::unwrap_used)]

use std::alloc::System;
use std::sync::Arc;
use std::time::Instant;

use smtp_proto::config::Config;
use smtp_proto::server::{Decision, Event, PeerInfo, Session};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Feeds `input`, answers every decision with Accept, discards output.
fn feed(s: &mut Session, input: &[u8], now: Instant) {
    let mut rest = input;
    let mut spins = 0;
    while !rest.is_empty() {
        let n = s.receive(rest, now);
        rest = &rest[n..];
        spins += 1;
        assert!(
            spins < 1000,
            "stuck with {:?} left",
            String::from_utf8_lossy(rest)
        );
        while let Some(ev) = s.poll().event() {
            let ticket = match ev {
                Event::Body(_) => None,
                other => other.into_ticket(),
            };
            if let Some(t) = ticket {
                s.respond(t, Decision::Accept, now).unwrap();
            }
        }
        let n = s.transmit().len();
        s.transmitted(n);
    }
}

/// Allocations made while `f` runs, the least of three runs: the counter is
/// process-wide, so the test harness's own threads can add a few on a busy
/// machine (CI once saw 4 in 1000 NOOPs); an allocation of ours shows in
/// every run.
fn allocations(mut f: impl FnMut()) -> usize {
    (0..3)
        .map(|_| {
            let region = Region::new(GLOBAL);
            f();
            region.change().allocations
        })
        .min()
        .unwrap_or(0)
}

#[test]
fn steady_state_allocations() {
    let now = Instant::now();
    let mut config = Config::new("mx.example");
    // 1000s of NOOPs would otherwise end the session as junk.
    config.limits.junk_command_limit = u32::MAX;
    let mut s = Session::new(
        Arc::new(config),
        PeerInfo::new("192.0.2.1:40000".parse().unwrap()),
        now,
    );
    let txn: &[u8] = b"MAIL FROM:<alice@example.org> SIZE=100\r\nRCPT TO:<bob@example.net>\r\nDATA\r\nSubject: x\r\n\r\nhello\r\n.\r\n";
    feed(&mut s, b"EHLO client.example\r\n", now);
    // Warm up: buffers reach their working size.
    for _ in 0..10 {
        feed(&mut s, txn, now);
        feed(&mut s, b"NOOP\r\nRSET\r\n", now);
    }
    let per_noop = allocations(|| {
        for _ in 0..1000 {
            feed(&mut s, b"NOOP\r\n", now);
        }
    });
    let per_rset = allocations(|| {
        for _ in 0..1000 {
            feed(&mut s, b"RSET\r\n", now);
        }
    });
    let per_txn = allocations(|| {
        for _ in 0..1000 {
            feed(&mut s, txn, now);
        }
    });
    eprintln!(
        "allocations per 1000: NOOP {per_noop}, RSET {per_rset}, MAIL+RCPT+DATA+body {per_txn}"
    );
    assert_eq!(per_noop, 0, "NOOP allocates");
    assert_eq!(per_rset, 0, "RSET allocates");
    assert_eq!(per_txn, 0, "a transaction allocates");
}
